"""Offline replay of recorded bags: rebuild each control step's observation, run the policy
once per pruning method x keep ratio, and report latency, kept tokens, action deviation from
the unpruned policy and the paper's attention analyses (Fig. 2, Fig. 11).

    from vla_pruner_ros.replay import ReplayConfig, load_timeline, run_replay
    timeline = load_timeline("episode_0", robot)                # BagError if a topic is missing
    result = run_replay(policy, robot, timeline, ReplayConfig(methods=("none", "vla_pruner")))

No rclpy needed; ``vla-pruner replay`` (tools/replay.py) is the command-line front.
"""
from .attention import ANALYSIS_LAYERS, AttentionLayers, AttentionScores, analysis_layers, unpruned_attention
from .metrics import OVERLAP_FRACTIONS, action_deviation, overlap_series, robust_stats, topk_count
from .observations import (
    STEP_SOURCES,
    VIEWS,
    HeldStep,
    ReplayStep,
    ReplayTimeline,
    ReplayTopics,
    check_bag,
    load_timeline,
)
from .runs import REFERENCE, ReplayConfig, ReplayResult, RunSpec, run_replay, run_specs, same_pruner_settings

__all__ = [
    "ANALYSIS_LAYERS", "AttentionLayers", "AttentionScores", "analysis_layers", "unpruned_attention",
    "OVERLAP_FRACTIONS", "action_deviation", "overlap_series", "robust_stats", "topk_count",
    "STEP_SOURCES", "VIEWS", "HeldStep", "ReplayStep", "ReplayTimeline", "ReplayTopics", "check_bag",
    "load_timeline",
    "REFERENCE", "ReplayConfig", "ReplayResult", "RunSpec", "run_replay", "run_specs", "same_pruner_settings",
]
