"""``vla-pruner replay``: replay a recorded bag offline through the policy, once per pruning
method x keep ratio, and report latency, kept tokens, action deviation from the unpruned
policy and the paper's attention analyses (rows, summary JSON, plots, a terminal table).

    vla-pruner replay episode_0 --checkpoint checkpoints/sim \\
        --methods none,fastv,vla_pruner --keep 0.5,0.25,0.125 --out replay_episode_0

Several bags: one output folder each under --out (default ./replay). Every (bag, method x keep
ratio) run is a unit: finished units are kept in units.jsonl and not run again when the command
is repeated (--no-resume starts over), and with --ray the units run on Ray workers that each load
the policy once (see ``vla_pruner_ros.distributed``).

See ``vla_pruner_ros.replay`` for how steps and observations are rebuilt.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vla_pruner_ros.control.params import NodeSettings
from vla_pruner_ros.tools._arguments import add_pruner_arguments, pruner_config_from_args, pruner_option_names

DEFAULTS = NodeSettings()
UNITS_FILE = "units.jsonl"


def _csv_list(text: str, convert, what: str) -> tuple:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    try:
        return tuple(convert(item) for item in items)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of {convert.__name__} values") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, nargs="+",
                        help="rosbag2 directory, .mcap or .db3 file; several: one output folder each under --out")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR", help="OFT checkpoint directory")
    parser.add_argument("--methods", default="none,fastv,vla_pruner",
                        help="comma-separated pruning methods; 'none' (the unpruned reference) always runs")
    parser.add_argument("--keep", default="0.5,0.25,0.125", help="comma-separated keep ratios in (0, 1]")
    # every other PrunerConfig field, the node's default (--prune-layer was --layer here, still accepted)
    add_pruner_arguments(parser, base=DEFAULTS.pruner, aliases={"prune_layer": ("--layer",)})
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
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default ./replay_<bag>; several bags: ./replay/<bag>/)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="per-step rows format")
    parser.add_argument("--sheet-keep", type=float, default=None,
                        help="keep ratio of the contact sheet (default: the middle one of --keep)")
    parser.add_argument("--sheet-steps", default=None, help="comma-separated steps of the contact sheet")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-resume", action="store_true",
                        help=f"run every unit again (default: units already in {UNITS_FILE} are not rerun)")
    from vla_pruner_ros.distributed import add_ray_arguments

    add_ray_arguments(parser)


def default_out_dir(bag: Path) -> Path:
    return Path.cwd() / f"replay_{_bag_name(bag)}"


def _bag_name(bag: Path) -> str:
    name = bag.name if bag.is_dir() or bag.suffix not in (".mcap", ".db3") else bag.stem
    return name or "bag"


def _error(text: str, code: int) -> int:
    print(f"vla-pruner replay: error: {text}", file=sys.stderr)
    return code


def _out_dirs(args) -> tuple[dict[str, Path], Path]:
    """bag key -> output folder, and the folder of units.jsonl. One bag: --out itself."""
    if len(args.bag) == 1:
        out = args.out or default_out_dir(args.bag[0])
        return {_bag_name(args.bag[0]): out}, out
    root = args.out or Path.cwd() / "replay"
    dirs: dict[str, Path] = {}
    for bag in args.bag:
        key, n = _bag_name(bag), 2
        while key in dirs:
            key, n = f"{_bag_name(bag)}_{n}", n + 1
        dirs[key] = root / key
    return dirs, root


def run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.bags import BagError
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.distributed import JsonlSink, WorkerSetupError, backend_from_args, run_units
    from vla_pruner_ros.replay import ReplayConfig, ReplayTopics, run_specs
    from vla_pruner_ros.replay.report import parquet_available
    from vla_pruner_ros.replay.runs import PolicySource, ReplayWork, SpecRun, TimelineSource, assemble, replay_units

    try:
        config = ReplayConfig(
            methods=_csv_list(args.methods, str, "--methods"),
            keep_ratios=_csv_list(args.keep, float, "--keep"),
            pruner=pruner_config_from_args(args, pruner_option_names(), base=DEFAULTS.pruner),
            analysis_layers=args.analysis_layers)
        sheet_steps = list(_csv_list(args.sheet_steps, int, "--sheet-steps")) if args.sheet_steps else None
        if args.format == "parquet" and not parquet_available():
            raise ValueError("--format parquet needs pyarrow, which is not installed; use --format csv")
        if args.sheet_keep is not None and args.sheet_keep not in config.keep_ratios:
            raise ValueError(f"--sheet-keep {args.sheet_keep:g} is not one of --keep {list(config.keep_ratios)}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads {args.threads}: expected at least 1")
        robot = load_robot_config(args.robot_config)
        backend = backend_from_args(args, device=args.device, threads=args.threads,
                                    on_tick=lambda key, n: progress.tick(key, n) if progress else None)
    except (ValueError, OSError) as error:  # OSError: an unreadable --robot-config
        return _error(str(error), 2)
    topics = ReplayTopics(fixed_camera=args.fixed_topic, wrist_camera=args.wrist_topic,
                          joint_states=args.joint_states_topic)
    out_dirs, units_dir = _out_dirs(args)
    sources = {key: TimelineSource(str(bag), topics, step_source=args.step_source, step_period=args.step_period,
                                   max_input_age=args.max_input_age, instruction=args.instruction,
                                   max_steps=args.max_steps)
               for key, bag in zip(out_dirs, args.bag)}

    timelines, steps = {}, {}
    for key, source in sources.items():
        started = time.perf_counter()
        try:
            timeline = source.load(robot)
        except BagError as error:
            return _error(str(error), 1)
        except ValueError as error:
            return _error(str(error), 2)
        _print_timeline(timeline, time.perf_counter() - started)
        if not timeline.steps:
            reasons = "\n  ".join(f"t={timeline.seconds(h.time_ns):.2f} s {h.reason}" for h in timeline.held[:5])
            return _error(f"no step of {source.bag!r} can run: every step was held\n  {reasons}", 1)
        outside = [step for step in sheet_steps or () if not 0 <= step < len(timeline.steps)]
        if outside:
            return _error(f"--sheet-steps {outside}: the replay of {source.bag!r} has steps "
                          f"0..{len(timeline.steps) - 1}", 2)
        steps[key] = len(timeline.steps)
        if len(sources) == 1:
            timelines[key] = timeline  # several bags: read again when writing, one at a time

    crops = {"auto": None, "true": True, "false": False}
    policy_source = PolicySource(str(args.checkpoint), device=None if args.device == "auto" else args.device,
                                 dtype=None if args.dtype == "auto" else args.dtype, unnorm_key=args.unnorm_key,
                                 center_crop=crops[args.center_crop], threads=args.threads)
    loaded = None
    if args.ray is None:  # here: load now, so that a bad checkpoint is reported before anything runs
        try:
            loaded = _load_policy(args)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            return _error(f"cannot load the checkpoint {str(args.checkpoint)!r}: {error}", 1)
    work = ReplayWork(policy_source, robot, config, sources, loaded=loaded, timelines=timelines)
    fingerprint = {"checkpoint": str(Path(args.checkpoint).resolve()), "device": args.device, "dtype": args.dtype,
                   "unnorm_key": args.unnorm_key, "center_crop": args.center_crop,
                   "robot_config": args.robot_config, "timeline": {**asdict(sources[next(iter(sources))]), "bag": None},
                   "config": {k: v for k, v in asdict(config).items() if k not in ("methods", "keep_ratios")}}
    try:
        units_path = units_dir / UNITS_FILE
        if args.no_resume and units_path.exists():
            units_path.unlink()
        sink = JsonlSink(units_path, fingerprint)
    except (ValueError, OSError) as error:
        return _error(str(error), 2)

    specs = run_specs(config)
    units = replay_units(config, list(sources))
    progress = _progress_bar({unit.key: steps[unit.args[0]] for unit in units}, args.quiet)
    if progress is not None:
        progress.skip([unit.key for unit in units if unit.key in sink])

    def failed(key: str, signature: str, final: bool) -> None:
        text = f"[replay] {key}: {signature} ({'given up: failed the same way twice' if final else 'retrying'})"
        (progress.bar.write if progress is not None else print)(text)

    try:
        report = run_units(work, units, backend=backend, sink=sink, on_failure=failed,
                           on_result=(lambda key, result: progress.finish(key)) if progress is not None else None)
    except ConnectionError as error:  # --ray ADDRESS (or RAY_ADDRESS) that cannot be reached
        return _error(f"--ray {args.ray}: {error}", 1)
    except (ValueError, WorkerSetupError) as error:  # e.g. --layer beyond the model
        return _error(str(error), 1)
    except (OSError, RuntimeError, KeyError) as error:  # a worker could not load the checkpoint
        return _error(f"cannot load the checkpoint {str(args.checkpoint)!r}: {error}", 1)
    finally:
        if progress is not None:
            progress.close()
    if report.resumed:
        print(f"[replay] {len(report.resumed)} run(s) taken from {units_path} (finished before; --no-resume "
              "runs them again)")
    code = 0
    for key, source in sources.items():
        names = [f"{key}/{spec.name}" for spec in specs]
        if any(name not in report.results for name in names):
            continue
        runs = {spec.name: SpecRun.from_dict(report.results[f"{key}/{spec.name}"]) for spec in specs}
        timeline = timelines.pop(key, None) or source.load(robot)
        try:
            result = assemble(config, timeline, runs)
        except ValueError as error:
            return _error(str(error), 1)
        if len(sources) > 1:
            print(f"\n[replay] ===== {source.bag}")
        code = max(code, _write_outputs(args, config, timeline, result, out_dirs[key], sheet_steps))
    if report.failed:
        for failure in report.failed.values():
            print(f"vla-pruner replay: error: {failure}", file=sys.stderr)
        print(f"vla-pruner replay: {len(report.failed)} run(s) failed twice; the others are kept in {units_path}: "
              "run the same command again to retry", file=sys.stderr)
        return 1
    return code


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
    """A tqdm bar over every step of every run, named after the run in progress. Runs here move it
    step by step; runs on Ray workers move it when they finish."""

    def __init__(self, steps: dict[str, int]):
        from tqdm import tqdm

        self.steps = steps  # unit key -> steps
        self.seen: dict[str, int] = {}
        self.bar = tqdm(total=sum(steps.values()), unit="step", file=sys.stderr, dynamic_ncols=True)
        self.current = None

    def _name(self, key: str) -> None:
        name = key.split("/", 1)[1] if len(self.steps) == len({k.split("/", 1)[1] for k in self.steps}) else key
        if name != self.current:
            self.current = name
            self.bar.set_description(f"{name:<18}")

    def skip(self, keys) -> None:
        for key in keys:
            self.seen[key] = self.steps[key]
            self.bar.update(self.steps[key])

    def tick(self, key: str, n: int) -> None:
        self._name(key)
        self.seen[key] = self.seen.get(key, 0) + n
        self.bar.update(n)

    def finish(self, key: str) -> None:
        self._name(key)
        left = self.steps[key] - self.seen.get(key, 0)
        self.seen[key] = self.steps[key]
        if left > 0:
            self.bar.update(left)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(steps: dict[str, int], quiet: bool):
    return None if quiet else _Progress(steps)


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
