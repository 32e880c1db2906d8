"""``vla-pruner train-sim``: record expert demonstrations in the simulator and train the small
OFT-format reach policy on them (not part of the test suite: tens of minutes on 2 CPU cores).

    vla-pruner train-sim --out checkpoints/xarm6_sim_reach --overwrite --plot docs/sim_policy/loss_curve.png

The long-horizon pre-grasp task (sim/pregrasp.py) trains the deeper ``xarm6-sim-deep`` preset, here
warm-started from the reach policy:

    vla-pruner train-sim --task pregrasp --scenes 120 --init-from checkpoints/xarm6_sim_reach \
        --work-dir artifacts/train_sim_pregrasp --out checkpoints/xarm6_sim_pregrasp --overwrite

The dataset is cached (``--dataset``, built when missing or with ``--rebuild``); training resumes
from ``--work-dir`` when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORK_DIR = ROOT / "artifacts" / "train_sim"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("demonstrations")
    data.add_argument("--dataset", default=None,
                      help="cached dataset .npz (default: WORK_DIR/dataset_<task>_<size>.npz); built when missing")
    data.add_argument("--rebuild", action="store_true", help="re-record the dataset even if the file exists")
    data.add_argument("--scenes", type=int, default=300, help="scenes (each recorded once per cube colour)")
    data.add_argument("--task", default="above",
                      help="sim task (see vla_pruner_ros.sim.TASKS): above (reach, the demo's), pregrasp (long horizon)")
    data.add_argument("--data-seed", type=int, default=0, help="seed of the noise/detour draws")
    train = parser.add_argument_group("training")
    train.add_argument("--out", default=str(DEFAULT_WORK_DIR / "checkpoint"),
                       help="checkpoint directory to write (the demo's default is checkpoints/xarm6_sim_reach)")
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="training state, log, loss curve")
    train.add_argument("--preset", default=None,
                       help="model preset (default: xarm6-sim-deep for --task pregrasp, else xarm6-sim)")
    train.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                       help="start from a trained checkpoint's weights (warm start; see training.train.warm_start)")
    train.add_argument("--steps", type=int, default=4000)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    train.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    train.add_argument("--aux-weight", type=float, default=0.5,
                       help="weight of the training-only target-position loss (0: plain OFT L1 only)")
    train.add_argument("--yaw-pretrain-steps", type=int, default=0,
                       help="pregrasp: first train the vision towers alone to read the yaw error from the wrist "
                            "view, for this many batches of near-cube samples (0: no; see "
                            "training.train.pretrain_wrist_yaw)")
    # processing_oft.ACTION_FRAMES, spelt out: importing it (torch) would slow every CLI start-up
    train.add_argument("--action-frame", choices=("absolute", "relative"), default="absolute",
                       help="what the head learns: absolute joint targets (OFT's), or offsets from the "
                            "sample's proprio (finer in the joints; written to the checkpoint, applied by "
                            "every loader)")
    train.add_argument("--eval-every", type=int, default=100, help="validation loss every N steps")
    train.add_argument("--eval-samples", type=int, default=384, help="validation samples per evaluation")
    train.add_argument("--save-every", type=int, default=100, help="save the training state every N steps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    train.add_argument("--plot", default=None, help="loss curve PNG (default WORK_DIR/loss_curve.png)")
    train.add_argument("--no-resume", action="store_true", help="start from scratch even if WORK_DIR has a state")
    train.add_argument("--export-only", action="store_true",
                       help="only write --out from WORK_DIR's latest saved state (e.g. while training runs)")


def run(args: argparse.Namespace) -> int:
    from ..model.checkpoint import PRESETS
    from ..training.dataset import DatasetConfig, build_dataset
    from ..training.train import TrainConfig, export_checkpoint, train

    if args.preset is None:
        args.preset = "xarm6-sim-deep" if args.task == "pregrasp" else "xarm6-sim"
    if args.preset not in PRESETS:
        raise SystemExit(f"train-sim: --preset {args.preset!r}: expected one of {sorted(PRESETS)}")
    image_size = PRESETS[args.preset].image_size
    work_dir = Path(args.work_dir)
    dataset = Path(args.dataset or work_dir / f"dataset_{args.task}_{image_size}.npz")
    started = time.time()
    if args.export_only:
        try:
            out = export_checkpoint(TrainConfig(dataset=os.fspath(dataset), out_dir=args.out,
                                                work_dir=os.fspath(work_dir), preset=args.preset, seed=args.seed,
                                                overwrite=args.overwrite))
        except ValueError as error:
            raise SystemExit(f"train-sim: {error}") from None
        print(f"exported {out} from {work_dir}")
        return 0
    if args.rebuild or not dataset.is_file():
        data_config = DatasetConfig(num_scenes=args.scenes, task=args.task, image_size=image_size,
                                    seed=args.data_seed)
        summary = build_dataset(data_config, dataset)
        print(f"recorded {summary['episodes']} episodes, {summary['samples']} samples -> {dataset} "
              f"(expert success {summary['expert_success']:.1%}, {time.time() - started:.0f} s)")
    config = TrainConfig(dataset=os.fspath(dataset), out_dir=args.out, work_dir=os.fspath(work_dir),
                         preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                         learning_rate=args.lr, warmup_steps=args.warmup, seed=args.seed, threads=args.threads,
                         aux_weight=args.aux_weight, init_from=args.init_from, eval_every=args.eval_every,
                         yaw_pretrain_steps=args.yaw_pretrain_steps, action_frame=args.action_frame,
                         eval_samples=args.eval_samples, save_every=args.save_every,
                         loss_plot=args.plot, overwrite=args.overwrite, resume=not args.no_resume)
    summary = train(config)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['checkpoint']} ({summary['checkpoint_mb']:.1f} MB); loss curve "
          f"{args.plot or work_dir / 'loss_curve.png'}; total {time.time() - started:.0f} s")
    return 0
