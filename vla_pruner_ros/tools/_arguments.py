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
