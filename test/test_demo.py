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


def _node_processes(marker: str) -> list[int]:
    """PIDs of processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command and "vla_pruner_ros.nodes." in command:
            found.append(int(entry.name))
    return found


def test_demo_prints_a_line_per_step_and_stops_cleanly_on_sigterm(tiny_checkpoint, tmp_path):
    log_dir = tmp_path / "logs"
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_pruner_ros.tools.cli", "demo", "--checkpoint", str(tiny_checkpoint),
         "--keep-ratio", "0.25", "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, steps = [], []
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
        # The warm-up runs every token, then VLA-Pruner keeps 25 % of the 512.
        assert steps[0].group(2) == "warm-up" and int(steps[0].group(1)) == 512
        assert any(m.group(2) == "pruned" and int(m.group(1)) == 128 for m in steps), "".join(seen)
        assert _node_processes(str(tiny_checkpoint)), "the policy node is not a child process"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.5)
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert "[demo] stopping nodes" in output and "policy latency after warm-up: median" in output, output
    assert not _node_processes(str(tiny_checkpoint)), "a node outlived the demo"
    assert {p.name for p in log_dir.iterdir()} >= {"vla_pruner_policy.log", "sim_xarm6.log", "sim_cameras.log"}
