"""``vla-pruner eval-libero``: LIBERO success rate per pruning method and keep ratio (paper Table 1).

Follows OpenVLA-OFT's LIBERO protocol (moojink/openvla-oft 213c5ff, run_libero_eval.py: fixed
initial states, the environment seeded once per task with episodes in order, the suite's step
limit, 10 settle steps, rotated 256x256 frames, the checkpoint's resize + center crop, open-loop
chunks, gripper post-processing, the suite's statistics key, an episode that raises counted as a
failure) with the project's own policy and pruners, loading the policy once for every
configuration; every configuration sees the same scenes. The one known difference: the JPEG round
trip + lanczos resize to 224 runs in Pillow, not TensorFlow (README: "Differences from OFT's
LIBERO evaluation"). Results go to --out: episodes.jsonl (resumable: finished
episodes are not run again), results.csv, results.json and success_vs_keep.png; videos/ with
--video N.

    vla-pruner eval-libero --checkpoint ~/ckpt/openvla-7b-oft-finetuned-libero-spatial \\
        --suite libero_spatial --methods none,fastv,vla_pruner --keep 0.5,0.25,0.125 --device cuda

Needs the optional LIBERO extra (scripts/setup_libero.sh).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

DEFAULT_METHODS = "none,vla_pruner"
DEFAULT_KEEP = "0.5,0.25,0.125"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from vla_pruner_ros.libero.protocol import EPISODES_PER_TASK, NUM_STEPS_WAIT, SUITE_MAX_STEPS, SUITES

    parser.add_argument("--checkpoint", required=True, help="OFT checkpoint directory (local; nothing is downloaded)")
    parser.add_argument("--suite", required=True, choices=SUITES, help="LIBERO task suite")
    parser.add_argument("--tasks", default=None, help="task ids, e.g. 0,3,5-7 (default: all tasks of the suite)")
    parser.add_argument("--episodes-per-task", type=int, default=EPISODES_PER_TASK,
                        help=f"episodes per task, one per fixed initial state (default {EPISODES_PER_TASK})")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated pruning methods; 'none' is the unpruned reference, run once "
                             f"(default {DEFAULT_METHODS})")
    parser.add_argument("--keep", default=DEFAULT_KEEP, help=f"comma-separated keep ratios (default {DEFAULT_KEEP})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="model dtype (default auto: bfloat16 on CUDA and on a CPU with native bf16, else float32)")
    parser.add_argument("--out", default=None, help="results folder (default artifacts/libero/<suite>)")
    parser.add_argument("--unnorm-key", default=None,
                        help="dataset-statistics key (default: <suite>, else <suite>_no_noops)")
    parser.add_argument("--center-crop", default="auto", choices=["auto", "on", "off"],
                        help="test-time center crop (auto: the checkpoint's vla_pruner_oft.json if it says, else on "
                             "as OFT's LIBERO checkpoints were trained with crop augmentation)")
    parser.add_argument("--prune-layer", type=int, default=None, help="K, the layer where tokens are dropped "
                        "(default: PrunerConfig's, 3)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help=f"policy actions per episode (default: the suite's, {SUITE_MAX_STEPS}); a smaller "
                             "value is a smoke test, not the protocol")
    parser.add_argument("--num-steps-wait", type=int, default=NUM_STEPS_WAIT,
                        help=f"settle steps with the no-op action (default {NUM_STEPS_WAIT})")
    parser.add_argument("--open-loop-steps", type=int, default=None,
                        help="actions executed per chunk before re-querying; as OFT's deque(maxlen=n), the LAST "
                             "n actions of the chunk (default: the whole chunk, 8 for OFT)")
    parser.add_argument("--video", type=int, default=0, metavar="N",
                        help="write a video of the first N episodes of each task and configuration")
    parser.add_argument("--video-format", default="mp4", choices=["mp4", "gif"])
    parser.add_argument("--warmup-calls", type=int, default=1,
                        help="untimed policy calls before each configuration's first episode (default 1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of torch/numpy/random (OFT uses 7)")
    parser.add_argument("--per-task", action="store_true", help="print the per-task rows too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from vla_pruner_ros.distributed import add_ray_arguments  # --ray: episodes as units on Ray (issue 18)

    add_ray_arguments(parser)
    return parser


def statistics_keys(checkpoint: Path) -> list[str]:
    """Keys of the checkpoint's dataset statistics, read without loading any weights."""
    from vla_pruner_ros.model.checkpoint import CONFIG_FILE, STATISTICS_FILE

    for name, field in ((STATISTICS_FILE, None), (CONFIG_FILE, "norm_stats")):
        path = checkpoint / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            data = data.get(field) if field else data
            if isinstance(data, dict) and data:
                return sorted(data)
    raise ValueError(f"{checkpoint}: no dataset statistics ({STATISTICS_FILE} or norm_stats in {CONFIG_FILE})")


def resolve_center_crop(checkpoint: Path, choice: str) -> bool:
    if choice != "auto":
        return choice == "on"
    from vla_pruner_ros.model.checkpoint import SIDECAR_FILE

    sidecar = checkpoint / SIDECAR_FILE
    if sidecar.is_file():
        value = json.loads(sidecar.read_text()).get("center_crop")
        if value is not None:
            return bool(value)
    return True


def seed_everything(seed: int) -> None:
    """OFT's ``set_seed_everywhere``: Python, numpy and torch seeds, deterministic cuDNN. (The
    scenes do not depend on it: LIBERO is seeded per task, see runner.SceneSeeds.)"""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.libero.runner import EvaluationAborted

    try:
        return _run(args)
    except ValueError as exc:
        print(f"vla-pruner eval-libero: error: {exc}", file=sys.stderr)
        return 2
    except EvaluationAborted as exc:
        print(f"vla-pruner eval-libero: stopped: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.libero import env as libero_env
    from vla_pruner_ros.libero.protocol import (
        ACTION_DIM,
        PROPRIO_DIM,
        SUITE_MAX_STEPS,
        build_configurations,
        check_suite,
        choose_unnorm_key,
        parse_keep_ratios,
        parse_list,
        parse_task_ids,
    )
    from vla_pruner_ros.libero.results import ResultsStore, check_run_metadata, write_reports
    from vla_pruner_ros.libero.runner import EpisodeSettings, evaluate, make_metadata
    from vla_pruner_ros.pruning import METHODS, PrunerConfig

    started = time.perf_counter()
    suite_name = check_suite(args.suite)
    configurations = build_configurations(parse_list(args.methods, "--methods"), parse_keep_ratios(args.keep), METHODS)
    if args.episodes_per_task < 1:
        raise ValueError(f"--episodes-per-task={args.episodes_per_task}: expected >= 1")
    if args.video < 0:
        raise ValueError(f"--video={args.video}: expected >= 0")
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_dir():
        raise ValueError(f"--checkpoint {checkpoint}: not a directory")
    unnorm_key = choose_unnorm_key(statistics_keys(checkpoint), suite_name, args.unnorm_key)
    center_crop = resolve_center_crop(checkpoint, args.center_crop)
    settings = EpisodeSettings(
        max_steps=args.max_steps if args.max_steps is not None else SUITE_MAX_STEPS[suite_name],
        num_steps_wait=args.num_steps_wait, open_loop_steps=args.open_loop_steps, warmup_calls=args.warmup_calls)
    if args.prune_layer is not None:
        PrunerConfig(prune_layer=args.prune_layer)  # validates the value before anything loads

    reason = libero_env.libero_unavailable_reason()
    if reason is not None:
        print(f"vla-pruner eval-libero: {reason}", file=sys.stderr)
        return 2

    out = Path(args.out) if args.out else Path("artifacts") / "libero" / suite_name
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The device is part of the run so that ms per chunk from two machines never mix in one table.
    metadata = make_metadata(checkpoint, suite_name, unnorm_key, settings, center_crop,
                             {"prune_layer": args.prune_layer, "dtype": args.dtype, "device": device})
    check_run_metadata(out, metadata)
    store = ResultsStore(out)
    if store.skipped_lines:
        print(f"{store.path}: ignored {store.skipped_lines} incomplete line(s); those episodes run again")

    from vla_pruner_ros.libero.env import LiberoSuite
    from vla_pruner_ros.model import load_policy

    suite = LiberoSuite(suite_name)  # before the (possibly 15 GB) policy load: --tasks errors come first
    task_ids = parse_task_ids(args.tasks, suite.num_tasks)
    if getattr(args, "ray", None) is not None:  # each Ray worker loads the policy itself (issue 18)
        from vla_pruner_ros.distributed.libero import run_on_ray

        return run_on_ray(args, suite, checkpoint, unnorm_key, center_crop, device, configurations, task_ids,
                          settings, store, metadata, out, started)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    seed_everything(args.seed)
    load_start = time.perf_counter()
    policy = load_policy(checkpoint, device=device, dtype=dtype, unnorm_key=unnorm_key, center_crop=center_crop)
    load_s = time.perf_counter() - load_start
    if policy.action_dim != ACTION_DIM:
        raise ValueError(f"--checkpoint: action dimension {policy.action_dim}; LIBERO needs {ACTION_DIM}")
    if policy.proprio_dim not in (None, PROPRIO_DIM):
        raise ValueError(f"--checkpoint: proprio dimension {policy.proprio_dim}; LIBERO's proprio has {PROPRIO_DIM}")

    def pruner_config(configuration):
        if configuration.method == "none":
            return None
        extra = {"prune_layer": args.prune_layer} if args.prune_layer is not None else {}
        return PrunerConfig(method=configuration.method, keep_ratio=configuration.keep_ratio, **extra)

    print(f"policy: {checkpoint} on {policy.device} ({policy.dtype}), loaded in {load_s:.1f} s; unnorm_key "
          f"{unnorm_key}; center crop {'on' if center_crop else 'off'}; {policy.num_visual_tokens} visual tokens")
    print(f"suite {suite_name}: tasks {task_ids}, {args.episodes_per_task} episode(s) each, "
          f"{len(configurations)} configuration(s): {', '.join(c.label for c in configurations)}; "
          f"max {settings.max_steps} steps + {settings.num_steps_wait} settle; results in {out}")
    paths: dict = {}
    try:
        ran = evaluate(policy, suite, configurations, task_ids, args.episodes_per_task, settings, store,
                       pruner_config=pruner_config, videos_per_task=args.video, video_format=args.video_format,
                       progress=not args.no_progress)
    finally:
        if store.records:
            paths = write_reports(store, metadata, title=f"{suite_name}: {checkpoint.name}")
    print_run_summary(store, ran, time.perf_counter() - started, args.per_task, paths)
    return 0


def print_run_summary(store, ran: int, wall_s: float, per_task: bool, paths: dict) -> None:
    """The end of an eval-libero run, serial or on Ray: the table, counts, errors, result files."""
    from vla_pruner_ros.libero.results import format_table, summarize
    from vla_pruner_ros.libero.runner import ERRORS_LOG

    print(format_table(summarize(store.records.values()), per_task=per_task))
    print(f"{ran} episode(s) run now, {len(store)} in {store.path}; wall time {wall_s:.1f} s")
    errors = sum(1 for r in store.records.values() if r.error)
    if errors:
        print(f"{errors} episode(s) ended with an exception and count as failures (as in OFT): the 'error' field "
              f"of {store.path.name}, tracebacks in {store.out_dir / ERRORS_LOG}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
