"""argparse types shared by the command line tools (bench, eval-sim)."""
from __future__ import annotations

import argparse


def method_list(text: str) -> tuple[str, ...]:
    """'none, fastv,vla_pruner' -> ('none', 'fastv', 'vla_pruner'); unknown names are refused.
    A name may carry PrunerConfig fields, 'vla_pruner:action_source=current' (pruning/variants.py)."""
    from ..pruning import METHODS
    from ..pruning.variants import split_method

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(
            f"--methods {text!r}: expected comma-separated names from {', '.join(METHODS)}")
    for name in names:
        try:
            split_method(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"--methods {text!r}: {error}") from None
    return names


def keep_ratio_list(text: str) -> tuple[float, ...]:
    """'0.5,0.25' -> (0.5, 0.25); every ratio in (0, 1]."""
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        ratios = ()
    if not ratios or any(not 0 < ratio <= 1 for ratio in ratios):
        raise argparse.ArgumentTypeError(f"--keep {text!r}: expected comma-separated keep ratios in (0, 1]")
    return ratios


# --- PrunerConfig fields as options (their declarations in pruning/config.py) -------------------
def pruner_option_names(config_class: type | None = None) -> tuple[str, ...]:
    """Every scalar PrunerConfig field but those a command's --methods / --keep say (the ones a
    variant may not set either): what a command taking all of them gets, one option each (a new
    field becomes a new option)."""
    from ..pruning.config import pruner_settings
    from ..pruning.variants import RESERVED

    return tuple(s.name for s in pruner_settings(config_class) if s.kind is not None and s.name not in RESERVED)


def _setting_type(declared):
    """An argparse type: the text as the field's type, checked against its declaration."""
    def convert(text: str):
        try:
            if declared.kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError(f"PrunerConfig.{declared.name}={text!r} is invalid: expected true or false")
                value = text.lower() == "true"
            else:
                value = declared.kind(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                str(error) if declared.kind is bool else f"{text!r}: expected {declared.allowed()}") from None
        try:
            declared.check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    convert.__name__ = declared.kind.__name__  # argparse names it in "invalid int value"
    return convert


def add_pruner_arguments(parser: argparse.ArgumentParser, names=None, base=None,
                         aliases: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """One option per PrunerConfig field in ``names`` (default: ``pruner_option_names()``):
    ``--prune-layer`` for prune_layer, its help the field's description, its default ``base``'s
    (PrunerConfig() when None), its values checked as PrunerConfig checks them. ``aliases`` adds
    option strings (``{"prune_layer": ("--layer",)}``). The value lands in ``args.<field>``.
    Returns the field names, for ``pruner_config_from_args``."""
    from ..pruning import PrunerConfig
    from ..pruning.config import pruner_setting

    base = PrunerConfig() if base is None else base
    names = pruner_option_names(type(base)) if names is None else tuple(names)
    for name in names:
        declared = pruner_setting(name, type(base))
        if declared.kind is None:
            raise ValueError(f"PrunerConfig.{name} is not a scalar setting: no option for it")
        default = getattr(base, name)
        parser.add_argument(declared.option, *(aliases or {}).get(name, ()), dest=name, default=default,
                            type=_setting_type(declared),
                            metavar="{" + ",".join(declared.choices) + "}" if declared.choices else None,
                            help=f"{declared.description} (default {default})".replace("%", "%%"))
    return names


def pruner_config_from_args(args: argparse.Namespace, names, base=None):
    """``base`` (PrunerConfig() when None) with the fields ``names`` taken from ``args``."""
    from ..pruning import PrunerConfig

    base = PrunerConfig() if base is None else base
    return base.replace(**{name: getattr(args, name) for name in names})
