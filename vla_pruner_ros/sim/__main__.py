"""Command-line checks of the simulation core.

python -m vla_pruner_ros.sim views  [--out /tmp/sim_views] [--seed 0]   # PNGs of both cameras
python -m vla_pruner_ros.sim bench  [--repeats 200]                      # render/step timings
python -m vla_pruner_ros.sim expert [--episodes 100] [--task above]      # expert success rate
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from .env import SimEnv, run_expert_episode
from .kinematics import HOME_JOINTS, XArm6Kinematics
from .render import Renderer
from .scene import Scene
from .task import TASKS


def save_views(out_dir: str, seed: int, size: tuple[int, int]) -> list[str]:
    """Both views at the start, midway and at the end of expert episodes, plus a posed arm."""
    os.makedirs(out_dir, exist_ok=True)
    env = SimEnv(seed, image_size=size)
    paths = []
    for task in TASKS:
        result = run_expert_episode(env, seed=seed, task=task)
        steps = result["observations"] + [env.observation()]
        for label, index in (("start", 0), ("mid", len(steps) // 2), ("end", len(steps) - 1)):
            images = steps[index]["images"]
            pair = np.concatenate([images["fixed"], images["wrist"]], axis=1)
            path = os.path.join(out_dir, f"seed{seed}_{task}_{label}.png")
            cv2.imwrite(path, cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
            paths.append(path)
    kinematics, renderer, scene = XArm6Kinematics(), Renderer(size[1], size[0]), Scene(seed)
    for name, joints, gripper in (("home_open", HOME_JOINTS, 0.0),
                                  ("side_closed", np.array([-0.7, 0.2, -0.9, 0.4, 0.9, 0.3]), 1.0)):
        views = renderer.render_views(scene, kinematics.forward_kinematics(joints), gripper)
        path = os.path.join(out_dir, f"seed{seed}_{name}.png")
        cv2.imwrite(path, cv2.cvtColor(np.concatenate([views["fixed"], views["wrist"]], 1), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def bench(repeats: int) -> None:
    kinematics = XArm6Kinematics()
    scene = Scene(0)
    rng = np.random.default_rng(0)
    joints = HOME_JOINTS + rng.uniform(-0.3, 0.3, (repeats, 6))
    frames = kinematics.forward_kinematics(joints)
    for height, width in ((112, 112), (224, 224), (240, 320)):
        renderer = Renderer(width, height)
        renderer.render_views(scene, frames[0], 0.0)  # warm caches (table texture, fixed view)
        timings = {}
        for camera in scene.cameras:
            start = time.perf_counter()
            for i in range(repeats):
                renderer.render(scene, frames[i], 0.0, camera)
            timings[camera] = (time.perf_counter() - start) / repeats * 1e3
        start = time.perf_counter()
        for i in range(repeats):
            renderer.render_views(scene, frames[i], 0.0)
        both = (time.perf_counter() - start) / repeats * 1e3
        print(f"{height}x{width}: fixed {timings['fixed']:.2f} ms, wrist {timings['wrist']:.2f} ms, "
              f"both views {both:.2f} ms per state ({both / 2:.2f} ms per view)")
    env = SimEnv(0, image_size=None)
    start = time.perf_counter()
    for _ in range(repeats):
        env.step(np.concatenate([env.arm.joints, [0.0]]))
        if env.done:
            env.reset()
    no_render = (time.perf_counter() - start) / repeats * 1e3
    env = SimEnv(0, image_size=(224, 224))
    start = time.perf_counter()
    for _ in range(repeats):
        env.step(np.concatenate([env.arm.joints, [0.0]]))
        if env.done:
            env.reset()
    with_render = (time.perf_counter() - start) / repeats * 1e3
    print(f"SimEnv.step (10 physics sub-steps): {no_render:.2f} ms without images, "
          f"{with_render:.2f} ms with two 224x224 views (ratio {with_render / no_render:.1f}x)")


def expert(episodes: int, task: str, seed: int) -> None:
    env = SimEnv(seed, image_size=None, task=task)
    results = [run_expert_episode(env) for _ in range(episodes)]
    lengths = np.array([r["num_steps"] for r in results])
    rate = np.mean([r["success"] for r in results])
    print(f"task {task!r}: expert success {rate * 100:.1f}% over {episodes} episodes, "
          f"episode length mean {lengths.mean():.2f} steps (min {lengths.min()}, max {lengths.max()}, "
          f"limit {env.max_steps})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m vla_pruner_ros.sim")
    sub = parser.add_subparsers(dest="command", required=True)
    views = sub.add_parser("views")
    views.add_argument("--out", default="/tmp/sim_views")
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("HEIGHT", "WIDTH"))
    timing = sub.add_parser("bench")
    timing.add_argument("--repeats", type=int, default=200)
    rollout = sub.add_parser("expert")
    rollout.add_argument("--episodes", type=int, default=100)
    rollout.add_argument("--task", default="above", choices=sorted(TASKS))
    rollout.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "views":
        for path in save_views(args.out, args.seed, tuple(args.size)):
            print(path)
    elif args.command == "bench":
        bench(args.repeats)
    else:
        expert(args.episodes, args.task, args.seed)


if __name__ == "__main__":
    main()
