"""The chunk-ensembling experiment of stop 27 (README: "Two more tries at the 90 % bar"), kept as the
script that made the numbers in results.txt; not part of the package.

ACT-style temporal ensembling of overlapping chunks in the pregrasp sim: the policy is called every
`--period` control steps; the point executed at step t is the weighted mean of every live chunk's
prediction for t (weight exp(-decay * k), k = 0 for the oldest chunk; decay -50 = newest only = the
plain node behaviour), then made safe exactly as the node does (executed_actions). Unpruned, float32.
Run from the repository root after `source .env.sh`:
    PYTHONPATH=$PWD python docs/sim_policy/pregrasp/chunk_ensembling/run.py --period 4 --decay 1.0 --out OUT.jsonl"""
import json, sys, time, argparse
import numpy as np
from multiprocessing import Pool

def run(args_tuple):
    ckpt, seeds, period, decay, task = args_tuple
    import torch
    torch.set_num_threads(1)
    from vla_pruner_ros.model.policy import load_policy
    from vla_pruner_ros.sim import SimEnv
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.training.evaluate import executed_actions, RENDER_SIZE
    policy = load_policy(ckpt, device="cpu", dtype="float32", announce=False)
    robot = load_robot_config()
    env = SimEnv(seed=0, image_size=RENDER_SIZE, control_period=0.1, task=task)
    out = []
    for seed in seeds:
        obs = env.reset(seed=seed, task=task); policy.reset()
        live = []  # (start step, actions)
        success = False; info = {}; calls = 0
        while not env.done:
            t = env.step_count
            o = policy.predict(images=obs["images"], proprio=obs["proprio"], instruction=obs["instruction"])
            calls += 1
            live.append((t, np.asarray(o.actions, dtype=np.float64)))
            L = len(o.actions)
            live = [(s, a) for s, a in live if s + L > t]
            blended = []
            for step in range(t, t + period):
                preds = [(k, a[step - s]) for k, (s, a) in enumerate(live) if 0 <= step - s < len(a)]
                w = np.array([np.exp(-decay * k) for k, _ in preds])
                blended.append((w[:, None] * np.stack([p for _, p in preds])).sum(0) / w.sum())
            blended = np.stack(blended)
            for action in executed_actions(blended, obs["joints"], robot, env.control_period, 1.0, period):
                obs, reached, done, info = env.step(action)
                success = success or bool(reached)
                if done: break
        out.append({"seed": seed, "success": success, "steps": env.step_count, "calls": calls,
                    "final_error": float(info.get("final_error", float("nan")))})
    return out

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="checkpoints/xarm6_sim_pregrasp")
    p.add_argument("--period", type=int, default=4)
    p.add_argument("--decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    seeds = list(range(a.seed, a.seed + a.episodes))
    chunks = [seeds[i::a.workers * 5] for i in range(a.workers * 5)]
    t0 = time.time()
    with Pool(a.workers) as pool:
        res = [r for part in pool.imap_unordered(run, [(a.checkpoint, c, a.period, a.decay, "pregrasp") for c in chunks]) for r in part]
    res.sort(key=lambda r: r["seed"])
    with open(a.out, "w") as f:
        for r in res: f.write(json.dumps(r) + "\n")
    n = sum(r["success"] for r in res)
    print(f"period {a.period} decay {a.decay}: {n}/{len(res)} = {n/len(res):.1%}, mean calls {np.mean([r['calls'] for r in res]):.1f}, {time.time()-t0:.0f}s")
