"""The README's demo (`vla-pruner demo`, what scripts/demo.sh runs): the simulated arm, cameras and
policy node as child processes, one line per policy step, and a clean stop on SIGTERM with no
node left running."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

STEP_LINE = re.compile(r"^step\s+\d+\s+vla_pruner\s+keep 0\.250\s+tokens\s+(\d+)/512\s+(warm-up|pruned)\s+[\d.]+ ms \| "
                       r"red cube:\s+[\d.]+ cm away")


def _children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields after the command: state, ppid, ...
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def test_demo_prints_a_line_per_step_and_stops_cleanly_on_sigterm(tiny_checkpoint, tmp_path):
    log_dir = tmp_path / "logs"
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_pruner_ros.tools.cli", "demo", "--checkpoint", str(tiny_checkpoint),
         "--keep-ratio", "0.25", "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, steps, children = [], [], []
    deadline = time.monotonic() + 180
    try:
        while len(steps) < 5 and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            seen.append(line)
            match = STEP_LINE.match(line)
            if match:
                steps.append(match)
        assert len(steps) >= 5, "".join(seen)
        # Warm-up steps run every token; then VLA-Pruner keeps 25 % of the 512. (The first lines
        # may be missed while the monitor's subscription is matched, so no step is required first.)
        for match in steps:
            assert int(match.group(1)) == (512 if match.group(2) == "warm-up" else 128), "".join(seen)
        assert any(match.group(2) == "pruned" for match in steps), "".join(seen)
        children = _children_of(process.pid)
        assert len(children) == 3, f"expected the arm, cameras and policy node as children, got {children}"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        # Whatever happened above, no node may outlive this test (it would publish into the
        # session's ROS domain and disturb the tests after it).
        for pid in _wait_gone(children, 20.0):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert "[demo] stopping nodes" in output and "policy latency after warm-up: median" in output, output
    # No step was held because a camera frame or joint state waited too long to reach the policy
    # (issue 15: "holding: fixed: last message 0.65 s old > max_input_age 0.50 s" every few seconds
    # on an idle 2-core machine, the executor starved by the policy step). A step that is itself
    # slower than max_input_age (a loaded machine) drops its chunk with another message.
    assert not re.search(r"\[policy ERROR\] holding: \w+: last message", output), output
    assert re.search(r"age of a step's oldest input when its stats arrived: median \d+ ms", output), output
    # Whether the named cube was reached (eval-sim's success test) is said once at the end.
    assert re.search(r"\[demo\] target (reached: the \w+ cube at step \d+|not reached: closest [\d.]+ cm)", output), output
    assert {p.name for p in log_dir.iterdir()} >= {"vla_pruner_policy.log", "sim_xarm6.log", "sim_cameras.log"}


def test_demo_nodes_stop_when_the_demo_is_killed(tiny_checkpoint, tmp_path):
    """SIGKILL leaves the demo no chance to stop its nodes: they must stop by themselves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_pruner_ros.tools.cli", "demo", "--checkpoint", str(tiny_checkpoint),
         "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    children = []
    try:
        deadline = time.monotonic() + 60
        while len(children) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            children = _children_of(process.pid)
        assert len(children) == 3, children
        time.sleep(2.0)  # let the nodes get past their start-up
        process.kill()
        process.wait(timeout=10)
        left = _wait_gone(children, 30.0)
        assert not left, f"nodes still running after their demo was killed: {left}"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _wait_gone(children, 0.0):
            os.kill(pid, signal.SIGKILL)


def test_demo_method_variants_become_the_policy_nodes_prune_parameters():
    """`vla-pruner demo --method` takes eval-sim's variant syntax; each field becomes its node parameter."""
    from vla_pruner_ros.tools.demo import method_parameters

    assert method_parameters("vla_pruner:target_ms=30:min_keep_ratio=0.1:prune_layer=2") == {
        "prune.method": "vla_pruner", "prune.target_ms": 30.0, "prune.min_keep_ratio": 0.1, "prune.layer": 2}
    assert method_parameters("fastv") == {"prune.method": "fastv"}
    with pytest.raises(ValueError, match="not a policy node parameter"):
        method_parameters("vla_pruner:unobserved=carry")  # an offline-only setting
    with pytest.raises(ValueError, match="is not FIELD=VALUE"):
        method_parameters("vla_pruner:no_such_field=1")
    with pytest.raises(ValueError, match="target_ms"):
        method_parameters("vla_pruner:target_ms=-5")
    with pytest.raises(ValueError, match="unknown"):
        method_parameters("fastest")


def test_demo_monitor_writes_every_step_to_csv_and_says_how_often_the_budget_held(tmp_path, capsys):
    from ros_harness import RosHarness, wait_for
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from vla_pruner_ros.msg import PrunerStats
    from vla_pruner_ros.tools.monitor import DemoMonitor

    harness = RosHarness()
    try:
        path = tmp_path / "stats.csv"
        monitor = harness.add(DemoMonitor(stats_csv=str(path), context=harness.context))
        sender = harness.node("stats_sender")
        pub = sender.create_publisher(PrunerStats, "/vla_pruner_policy/stats",
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        wait_for(lambda: pub.get_subscription_count() > 0, 20.0, message="the monitor's subscription")
        # one warm-up step, then five budgeted steps against a 30 ms target: 4 within +5 % (<= 31.5 ms)
        for index, (ms, warmup, chosen) in enumerate([(50.0, True, float("nan")), (20.0, False, 1.0), (25.0, False, 1.0),
                                                      (40.0, False, 0.5), (31.0, False, 0.4), (31.4, False, 0.4)]):
            pub.publish(PrunerStats(step_index=index, method="vla_pruner", warmup=warmup, target_ms=30.0,
                                    total_ms=ms, chosen_keep_ratio=chosen, visual_tokens_before=512,
                                    visual_tokens_after=int(512 * (1.0 if warmup else chosen))))
        wait_for(lambda: path.is_file() and len(path.read_text().splitlines()) == 7, 20.0, message="6 CSV rows")
        monitor.print_summary()
        monitor.close()
    finally:
        harness.close()
    import csv

    rows = list(csv.DictReader(path.open()))
    assert [int(r["step_index"]) for r in rows] == list(range(6))
    assert [float(r["total_ms"]) for r in rows] == pytest.approx([50.0, 20.0, 25.0, 40.0, 31.0, 31.4])
    assert {"received_s", "stamp_s", "target_ms", "chosen_keep_ratio", "visual_tokens_after"} <= set(rows[0])
    out = capsys.readouterr().out
    assert "latency budget 30 ms: 4/5 steps after warm-up within +5 % (80%); chosen keep ratio median 0.50 " \
           "(min 0.40, max 1.00)" in out, out
