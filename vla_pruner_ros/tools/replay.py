"""``vla-pruner replay``: replay a recorded bag offline through the policy, once per pruning
method x keep ratio, and report latency, kept tokens, action deviation from the unpruned
policy and the paper's attention analyses (rows, summary JSON, plots, a terminal table).

    vla-pruner replay episode_0 --checkpoint checkpoints/sim \\
        --methods none,fastv,vla_pruner --keep 0.5,0.25,0.125 --out replay_episode_0

See ``vla_pruner_ros.replay`` for how steps and observations are rebuilt.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vla_pruner_ros.control.params import NodeSettings

DEFAULTS = NodeSettings()


def _csv_list(text: str, convert, what: str) -> tuple:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    try:
        return tuple(convert(item) for item in items)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of {convert.__name__} values") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 directory, .mcap or .db3 file")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR", help="OFT checkpoint directory")
    parser.add_argument("--methods", default="none,fastv,vla_pruner",
                        help="comma-separated pruning methods; 'none' (the unpruned reference) always runs")
    parser.add_argument("--keep", default="0.5,0.25,0.125", help="comma-separated keep ratios in (0, 1]")
    parser.add_argument("--window", type=int, default=DEFAULTS.window,
                        help="action-attention window w (= warm-up steps)")
    parser.add_argument("--decay", type=float, default=DEFAULTS.decay, help="decay gamma of the window (Eq. 7)")
    parser.add_argument("--smoothing", choices=("window", "ema"), default=DEFAULTS.smoothing)
    parser.add_argument("--ema-alpha", type=float, default=DEFAULTS.ema_alpha)
    parser.add_argument("--layer", type=int, default=DEFAULTS.prune_layer, help="prune layer K")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the random method")
    parser.add_argument("--step-source", choices=("auto", "stats", "period"), default="auto",
                        help="step times from the recorded /vla_pruner_policy/stats (auto: when recorded) "
                             "or every --step-period seconds")
    parser.add_argument("--step-period", type=float, default=DEFAULTS.step_period, metavar="S",
                        help=f"seconds between steps without stats (default actions_per_step/control_rate "
                             f"= {DEFAULTS.step_period:g})")
    parser.add_argument("--max-input-age", type=float, default=DEFAULTS.max_input_age, metavar="S",
                        help="hold a step whose camera/joint inputs are older than this, as the node does")
    parser.add_argument("--instruction", default=None, help="instruction to use (overrides the bag's)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N", help="replay only the first N steps")
    parser.add_argument("--fixed-topic", default="/fixed_camera/color/image_raw")
    parser.add_argument("--wrist-topic", default="/wrist_camera/color/image_raw")
    parser.add_argument("--joint-states-topic", default="/joint_states")
    parser.add_argument("--robot-config", default=None, help="robot YAML (default config/xarm6.yaml)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--unnorm-key", default=None, help="dataset_statistics.json key")
    parser.add_argument("--center-crop", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("--analysis-layers", choices=("pruner", "all"), default="pruner",
                        help="layers of the Fig. 2 analysis: the pruner's (S_vl at K-1, S_act latter half) or all")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default ./replay_<bag>)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="per-step rows format")
    parser.add_argument("--sheet-keep", type=float, default=None,
                        help="keep ratio of the contact sheet (default: the middle one of --keep)")
    parser.add_argument("--sheet-steps", default=None, help="comma-separated steps of the contact sheet")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def default_out_dir(bag: Path) -> Path:
    name = bag.name if bag.is_dir() or bag.suffix not in (".mcap", ".db3") else bag.stem
    return Path.cwd() / f"replay_{name or 'bag'}"


def _error(text: str, code: int) -> int:
    print(f"vla-pruner replay: error: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.bags import BagError
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.replay import ReplayConfig, ReplayTopics, load_timeline, run_replay, run_specs
    from vla_pruner_ros.replay.report import parquet_available

    try:
        config = ReplayConfig(
            methods=_csv_list(args.methods, str, "--methods"),
            keep_ratios=_csv_list(args.keep, float, "--keep"),
            prune_layer=args.layer, window=args.window, decay=args.decay, smoothing=args.smoothing,
            ema_alpha=args.ema_alpha, seed=args.seed, analysis_layers=args.analysis_layers)
        sheet_steps = list(_csv_list(args.sheet_steps, int, "--sheet-steps")) if args.sheet_steps else None
        if args.format == "parquet" and not parquet_available():
            raise ValueError("--format parquet needs pyarrow, which is not installed; use --format csv")
        if args.sheet_keep is not None and args.sheet_keep not in config.keep_ratios:
            raise ValueError(f"--sheet-keep {args.sheet_keep:g} is not one of --keep {list(config.keep_ratios)}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads {args.threads}: expected at least 1")
        robot = load_robot_config(args.robot_config)
    except (ValueError, OSError) as error:  # OSError: an unreadable --robot-config
        return _error(str(error), 2)
    topics = ReplayTopics(fixed_camera=args.fixed_topic, wrist_camera=args.wrist_topic,
                          joint_states=args.joint_states_topic)
    out_dir = args.out or default_out_dir(args.bag)

    started = time.perf_counter()
    try:
        timeline = load_timeline(args.bag, robot, topics, step_source=args.step_source, step_period=args.step_period,
                                 max_input_age=args.max_input_age, instruction=args.instruction,
                                 max_steps=args.max_steps)
    except BagError as error:
        return _error(str(error), 1)
    except ValueError as error:
        return _error(str(error), 2)
    _print_timeline(timeline, time.perf_counter() - started)
    if not timeline.steps:
        reasons = "\n  ".join(f"t={timeline.seconds(h.time_ns):.2f} s {h.reason}" for h in timeline.held[:5])
        return _error(f"no step of {str(args.bag)!r} can run: every step was held\n  {reasons}", 1)
    outside = [step for step in sheet_steps or () if not 0 <= step < len(timeline.steps)]
    if outside:
        return _error(f"--sheet-steps {outside}: the replay has steps 0..{len(timeline.steps) - 1}", 2)

    try:
        policy = _load_policy(args)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        return _error(f"cannot load the checkpoint {str(args.checkpoint)!r}: {error}", 1)

    specs = run_specs(config)
    progress = _progress_bar(len(specs) * len(timeline.steps), args.quiet)
    try:
        result = run_replay(policy, robot, timeline, config, progress=progress)
    except ValueError as error:  # e.g. --layer beyond the model, a chunk that cannot be made safe
        return _error(str(error), 1)
    finally:
        if progress is not None:
            progress.close()
    return _write_outputs(args, config, timeline, result, out_dir, sheet_steps)


def _load_policy(args):
    import torch

    from vla_pruner_ros.model import load_policy

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtypes = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    crops = {"auto": None, "true": True, "false": False}
    return load_policy(args.checkpoint, device=None if args.device == "auto" else args.device,
                       dtype=dtypes[args.dtype], unnorm_key=args.unnorm_key, center_crop=crops[args.center_crop])


class _Progress:
    """A tqdm bar over every step of every run, named after the run in progress."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.current = None

    def __call__(self, spec, step: int) -> None:
        if spec.name != self.current:
            self.current = spec.name
            self.bar.set_description(f"{spec.name:<18}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int, quiet: bool):
    return None if quiet else _Progress(total)


def _print_timeline(timeline, seconds: float) -> None:
    info = timeline.info
    print(f"[replay] bag {str(info.path)!r} ({info.storage}, {info.duration_s:.1f} s, "
          f"{info.message_count} messages) read in {seconds:.1f} s")
    timing = ("the recorded /vla_pruner_policy/stats stamps" if timeline.step_source == "stats"
              else f"every {timeline.step_period:g} s")
    print(f"[replay] {len(timeline.steps)} steps at {timing}; {len(timeline.held)} held; "
          f"{len(timeline.instructions)} episode(s); cameras: {', '.join(timeline.camera_topics.values())}")
    for held in timeline.held[:3]:
        print(f"[replay]   held at t={timeline.seconds(held.time_ns):.2f} s: {held.reason}")
    if timeline.skipped_messages:
        print(f"[replay] undecodable messages skipped (as the node would): {timeline.skipped_messages}")
    for index, text in enumerate(timeline.instructions):
        print(f"[replay] episode {index}: {text!r} (from {timeline.instruction_source})")
    first = timeline.steps[0].online if timeline.steps else None
    if first and first["step_index"] > 0:
        # The node's history from before the bag is unknown: the replay starts this episode afresh.
        print(f"[replay] note: the bag starts at online step {first['step_index']} of an episode; the replay "
              "restarts the pruner history there, so its first steps may keep other tokens than the node did")


def _write_outputs(args, config, timeline, result, out_dir: Path, sheet_steps) -> int:
    import numpy as np

    from vla_pruner_ros.replay.plots import write_plots
    from vla_pruner_ros.replay.report import format_table, summarize, write_rows, write_summary

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _error(f"cannot create the output folder {str(out_dir)!r}: {error.strerror or error}", 1)
    rows_path = write_rows(result.rows, out_dir / "steps", args.format)
    arrays = {f"kept_{name}": mask for name, mask in result.kept.items()}
    arrays.update(s_vl=result.s_vl, s_act=result.s_act,
                  time_s=np.array([timeline.seconds(step.time_ns) for step in timeline.steps]),
                  episode=np.array([step.episode for step in timeline.steps]))
    np.savez_compressed(out_dir / "tokens.npz", **arrays)
    files = {"rows": rows_path, "tokens": out_dir / "tokens.npz"}
    summary = summarize(result, timeline, config, extra={"checkpoint": str(args.checkpoint)})
    if not args.no_plots:
        try:
            files.update(write_plots(result, timeline, summary, out_dir, args.sheet_keep, sheet_steps))
        except ValueError as error:
            return _error(str(error), 2)
    summary["files"] = {name: str(path) for name, path in files.items()}
    files["summary"] = write_summary(summary, out_dir / "summary.json")

    print()
    print(format_table(summary))
    fig2 = summary["analysis"]["fig2_topk_overlap"]
    overlaps = ", ".join(f"{k}: {fig2['vl_act'][k]['mean']:.2f} / {fig2['act_prev'][k]['mean']:.2f}"
                         for k in fig2["vl_act"])
    print(f"\nunpruned top-k overlap, S_vl vs S_act / S_act t vs t-1 (mean): {overlaps}")
    for run in summary["runs"]:
        online = run["online"]
        if online["steps_compared"]:
            print(f"online agreement, {run['name']}: same kept tokens on {online['steps_same_kept']}/"
                  f"{online['steps_compared']} recorded steps")
    print(f"\nwrote {out_dir}/: " + ", ".join(sorted(Path(p).name for p in files.values())))
    return 0
