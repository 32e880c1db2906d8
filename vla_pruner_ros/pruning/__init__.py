"""Visual-token pruning for VLA models: VLA-Pruner (paper §4, App. A) and its baselines.

Pure torch, no ROS: used by the model, the ROS node, the replay tool and the benchmarks.

    from vla_pruner_ros.pruning import PrunerConfig, make_pruner
    pruner = make_pruner(PrunerConfig(method="vla_pruner", keep_ratio=0.25))

See docs/CONTRACTS.md for how the model drives a pruner step by step.
"""
from .config import PrunerConfig
from .methods import DIAGNOSTIC_KEYS, METHODS, Pruner, PrunePlan, Selection, make_pruner, register
from .scores import (
    QUERY_GROUPS,
    SequenceLayout,
    visual_attention_scores,
    visual_attention_scores_from_probs,
)
from .selection import (
    cosine_distance_matrix,
    dual_level_pools,
    dual_level_select,
    min_redundancy_filter,
    topk_indices,
    topk_overlap,
)
from .temporal import EMA, DecayingWindow

__all__ = [
    "DIAGNOSTIC_KEYS",
    "DecayingWindow",
    "EMA",
    "METHODS",
    "Pruner",
    "PrunePlan",
    "PrunerConfig",
    "QUERY_GROUPS",
    "Selection",
    "SequenceLayout",
    "cosine_distance_matrix",
    "dual_level_pools",
    "dual_level_select",
    "make_pruner",
    "min_redundancy_filter",
    "register",
    "topk_indices",
    "topk_overlap",
    "visual_attention_scores",
    "visual_attention_scores_from_probs",
]
