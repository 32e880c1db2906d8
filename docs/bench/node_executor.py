"""The policy node's step time and CPU under rclpy's single- vs multi-threaded executor, in one run.

Layout as launched: the simulated arm (100 Hz joint states) and cameras (30 Hz, 2 views) in their
own process on a single-threaded executor; the policy node (tiny checkpoint) in another, spun by
the executor under test. Each configuration gets fresh processes; steps of the first 5 s are
warm-up and not counted. Prints per configuration: the policy process's CPU, the step's median and
spread (PrunerStats.total_ms), and the ratio of the medians.

    source .env.sh && python docs/bench/node_executor.py [--seconds 20]
"""
import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

WARM_UP_S = 5.0


def _spin(context, executor, nodes):
    for node in nodes:
        executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return thread


def run_sims(seconds: float) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode
    from vla_pruner_ros.nodes.sim_xarm6 import SimXArm6Node

    context = rclpy.Context()
    rclpy.init(context=context)
    _spin(context, SingleThreadedExecutor(context=context),
          [SimXArm6Node(context=context), SimCamerasNode(context=context)])
    time.sleep(seconds)
    os._exit(0)


def run_policy(kind: str, checkpoint: str, seconds: float, results) -> None:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.msg import PrunerStats
    from vla_pruner_ros.nodes.policy_node import PolicyNode

    policy = load_policy(checkpoint)
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = (SingleThreadedExecutor(context=context) if kind == "single"
                else MultiThreadedExecutor(num_threads=4, context=context))  # the node's earlier default
    node = PolicyNode(policy=policy, context=context, parameter_overrides=[
        Parameter("autostart", value=True), Parameter("instruction", value="move the gripper above the red cube"),
        Parameter("max_input_age", value=5.0), Parameter("prune.keep_ratio", value=0.25)])
    steps = []
    node.create_subscription(PrunerStats, "~/stats", lambda msg: steps.append((time.monotonic(), msg.total_ms)), 10)
    _spin(context, executor, [node])
    time.sleep(WARM_UP_S)
    started, usage = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime) / (time.monotonic() - started)
    results.put((kind, cpu, [ms for at, ms in steps if at >= started]))
    results.close()
    results.join_thread()  # flushed before the hard exit (rclpy's teardown is not what is measured)
    os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    args = parser.parse_args()
    os.environ.setdefault("VLA_PRUNER_AUTO_DTYPE", "float32")
    import torch

    from vla_pruner_ros.model import make_checkpoint

    spawn = mp.get_context("spawn")
    checkpoint = str(make_checkpoint("tiny", tempfile.mkdtemp() + "/tiny", seed=0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average before {os.getloadavg()}", flush=True)
    results, medians = spawn.Queue(), {}
    for kind in ("multi", "single"):
        sims = spawn.Process(target=run_sims, args=(args.seconds + WARM_UP_S + 30,), daemon=True)
        sims.start()
        policy = spawn.Process(target=run_policy, args=(kind, checkpoint, args.seconds, results))
        policy.start()
        name, cpu, steps = results.get(timeout=args.seconds + 180)
        policy.join()
        sims.kill()
        sims.join()
        if not steps:
            print(f"{name}: no steps measured", file=sys.stderr)
            return 1
        quartiles = statistics.quantiles(steps, n=4)
        medians[name] = statistics.median(steps)
        print(f"{name:>6}-threaded executor: policy process CPU {100 * cpu:5.1f} %, {len(steps)} steps, "
              f"step median {medians[name]:6.1f} ms (IQR {quartiles[0]:.1f}-{quartiles[2]:.1f})", flush=True)
    print(f"step median multi / single: {medians['multi'] / medians['single']:.2f}x; "
          f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
