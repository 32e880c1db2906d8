"""LIBERO evaluation of OFT checkpoints with visual-token pruning (``vla-pruner eval-libero``).

    from vla_pruner_ros.libero import LiberoSuite, EpisodeSettings, ResultsStore, evaluate
    suite = LiberoSuite("libero_spatial")                  # needs the optional extra
    evaluate(policy, suite, configurations, task_ids=range(10), episodes_per_task=50,
             settings=EpisodeSettings(max_steps=220), store=ResultsStore("out/"))

The protocol helpers, the results store and the reports are pure Python; LIBERO itself is
imported only by ``LiberoSuite`` (see ``env.py`` for how it is made to run headless and offline).
"""
from .env import LiberoSuite, libero_unavailable_reason, prepare_libero
from .protocol import (
    ACTION_DIM,
    NUM_STEPS_WAIT,
    PROPRIO_DIM,
    SUITE_MAX_STEPS,
    SUITES,
    EvalConfiguration,
    build_configurations,
    choose_unnorm_key,
    images_from_obs,
    postprocess_action,
    proprio_from_obs,
    quat_to_axis_angle,
    rotate_180,
)
from .results import (
    EpisodeRecord,
    ResultsStore,
    Summary,
    check_run_metadata,
    format_table,
    plot_success_vs_keep,
    summarize,
    wilson_interval,
    write_reports,
)
from .runner import EpisodeSettings, default_pruner_config, evaluate, run_episode
from .video import write_video

__all__ = [
    "ACTION_DIM",
    "EpisodeRecord",
    "EpisodeSettings",
    "EvalConfiguration",
    "LiberoSuite",
    "NUM_STEPS_WAIT",
    "PROPRIO_DIM",
    "ResultsStore",
    "SUITES",
    "SUITE_MAX_STEPS",
    "Summary",
    "build_configurations",
    "check_run_metadata",
    "choose_unnorm_key",
    "default_pruner_config",
    "evaluate",
    "format_table",
    "images_from_obs",
    "libero_unavailable_reason",
    "plot_success_vs_keep",
    "postprocess_action",
    "prepare_libero",
    "proprio_from_obs",
    "quat_to_axis_angle",
    "rotate_180",
    "run_episode",
    "summarize",
    "wilson_interval",
    "write_reports",
    "write_video",
]
