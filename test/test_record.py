"""``vla-pruner record`` over real rclpy: the recorder runs in a subprocess, this test publishes,
stops it with a signal and reads the bag back (N messages per topic, in order, bit-identical)."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.duration import Duration  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rosbags.interfaces import QosDurability, QosReliability  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from vla_pruner_ros.bags import deserialize_ros, open_bag  # noqa: E402
from vla_pruner_ros.bags.writer import RESERVE_NAME  # noqa: E402
from vla_pruner_ros.msg import PrunerStats  # noqa: E402
from vla_pruner_ros.tools import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


# -- pure helpers ------------------------------------------------------------------------------------
def test_choose_qos_matches_the_publishers():
    reliable_volatile = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    qos = record.choose_qos([reliable_volatile, LATCHED])
    assert qos.reliability == ReliabilityPolicy.RELIABLE and qos.durability == DurabilityPolicy.VOLATILE
    qos = record.choose_qos([LATCHED, LATCHED])
    assert qos.durability == DurabilityPolicy.TRANSIENT_LOCAL
    qos = record.choose_qos([reliable_volatile, best_effort])
    assert qos.reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos.depth == record.SUBSCRIPTION_DEPTH


def test_to_bag_qos_writes_durations_like_rosbag2():
    from rclpy.duration import Infinite

    qos = record.to_bag_qos(LATCHED)
    assert qos.reliability == QosReliability.RELIABLE and qos.durability == QosDurability.TRANSIENT_LOCAL
    assert qos.depth == 1
    assert (qos.deadline.sec, qos.deadline.nsec) == (0, 0)  # "default", as the profile says
    # publishers report "infinite" as rmw's INT64_MAX nanoseconds
    reported = QoSProfile(depth=1, deadline=Infinite, lifespan=Duration(seconds=2, nanoseconds=5))
    qos = record.to_bag_qos(reported)
    assert (qos.deadline.sec, qos.deadline.nsec) == (9223372036, 854775807)
    assert (qos.lifespan.sec, qos.lifespan.nsec) == (2, 5)


def test_normalize_topics_and_config_errors(tmp_path):
    assert record.normalize_topics(["joint_states", "/joint_states", "/a/b"]) == ["/joint_states", "/a/b"]
    for bad in ([""], ["/"], ["a b"], []):
        with pytest.raises(ValueError, match="topic|no topics"):
            record.normalize_topics(bad)
    with pytest.raises(ValueError, match="storage must be one of mcap, sqlite3"):
        record.RecordConfig(out=tmp_path / "x", topics=["/a"], storage="bag")
    with pytest.raises(ValueError, match="duration must be > 0"):
        record.RecordConfig(out=tmp_path / "x", topics=["/a"], duration_s=0)
    with pytest.raises(ValueError, match="max_messages must be >= 1"):
        record.RecordConfig(out=tmp_path / "x", topics=["/a"], max_messages=0)
    assert record.default_out_dir().name.startswith("vla_pruner_20")


def test_command_line_rejects_bad_values(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    record.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "bag"), "--topics", "/a", "--duration", "0"])
    assert record.run(args) == 2
    assert "duration must be > 0 seconds, got 0.0" in capsys.readouterr().err
    args = parser.parse_args(["--out", str(tmp_path / "bag"), "--topics", "/a", "--reserve-mb", "-1"])
    assert record.run(args) == 2
    assert "reserve must be >= 0 bytes" in capsys.readouterr().err
    assert not (tmp_path / "bag").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["--storage", "rosbag1"])


def test_progress_line_and_final_table():
    line = record.progress_line(12.34, {"/joint_states": 120, "/cam": 30}, 2_500_000, waiting=2)
    assert line == "[rec   12.3 s] 150 msgs 2.5 MB | joint_states 120 | cam 30 | waiting for 2 topics"
    assert record.short_names(["/fixed_camera/color/image_raw", "/wrist_camera/color/image_raw",
                               "/policy/stats", "/monitor/stats", "/policy/mask"]) == {
        "/fixed_camera/color/image_raw": "fixed_camera", "/wrist_camera/color/image_raw": "wrist_camera",
        "/policy/stats": "policy/stats", "/monitor/stats": "monitor", "/policy/mask": "mask"}
    long_line = record.progress_line(1, {f"/topic_{i}": i for i in range(20)}, 0, 0, width=40)
    assert len(long_line) == 40 and long_line.endswith("...")
    stats = {"/joint_states": record.TopicStats("sensor_msgs/msg/JointState", "reliable, volatile", received=11,
                                                 written=11, bytes=2200, first_ns=0, last_ns=10**9)}
    table = record.final_table(Path("out"), "mcap", stats, ["/diagnostics"], 4000, 1.5)
    assert "1 topics, 11 messages" in table
    assert "/joint_states  sensor_msgs/msg/JointState       11      0.00    10.0  reliable, volatile" in table
    assert "not recorded (no publisher appeared): /diagnostics" in table


# -- the recorder as a process -----------------------------------------------------------------------
class RecorderProcess:
    """``python -m vla_pruner_ros.tools.cli record ...`` with its output collected live."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vla_pruner_ros.tools.cli", "record", *map(str, args)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                         for s, out in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.stdout) + "\n--- stderr ---\n" + "\n".join(self.stderr)

    def wait_for_lines(self, needles, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(n in line for line in self.stdout) for n in needles):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"recorder did not print {needles}:\n{self.output()}")

    def wait(self, timeout=30.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"recorder did not exit within {timeout} s:\n{self.output()}") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self, signum) -> int:
        self.proc.send_signal(signum)
        return self.wait()


@pytest.fixture
def ros_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("record_test_publisher", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def wait_matched(publishers, subscribers=1, timeout=20.0):
    publishers = list(publishers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() >= subscribers for p in publishers):
            return
        time.sleep(0.05)
    raise AssertionError("the recorder's subscriptions never matched the publishers")


def make_messages(index: int):
    image = Image(height=6, width=8, encoding="rgb8", step=24, data=bytes((index + k) % 256 for k in range(144)))
    image.header.stamp.sec = index  # header stamps far from now: the bag must use receive time
    image.header.frame_id = "fixed_camera"
    joints = JointState(name=[f"joint{i}" for i in range(1, 7)], position=[0.1 * index + i for i in range(6)])
    stats = PrunerStats(step_index=index, method="vla_pruner", keep_ratio=0.25, total_ms=10.0 + index)
    return image, joints, stats


TOPICS = {
    "/fixed_camera/color/image_raw": (Image, RELIABLE),
    "/joint_states": (JointState, RELIABLE),
    "/vla_pruner_policy/stats": (PrunerStats, RELIABLE),
    "/wrist_camera/color/image_raw": (Image, qos_profile_sensor_data),  # best effort
}


@pytest.mark.parametrize("storage, signum", [("mcap", signal.SIGINT), ("sqlite3", signal.SIGTERM)])
def test_record_until_signal_keeps_every_message(tmp_path, ros_node, storage, signum):
    count = 50
    kinds = {**TOPICS, "/instruction": (String, LATCHED)}
    publishers = {topic: ros_node.create_publisher(kind, topic, qos) for topic, (kind, qos) in kinds.items()}
    sent: dict[str, list] = {topic: [] for topic in kinds}
    # The bytes on the wire, as an independent raw subscriber in this process gets them.
    # (serialize_message() is no reference: rmw leaves CDR alignment padding uninitialised.)
    wire: dict[str, list[bytes]] = {topic: [] for topic in kinds}
    for topic, (kind, qos) in kinds.items():
        ros_node.create_subscription(kind, topic, wire[topic].append, qos, raw=True)
    instruction = String(data="pick up the red cube")
    publishers["/instruction"].publish(instruction)  # before the recorder exists: latched
    sent["/instruction"].append(instruction)

    out = tmp_path / "bag"
    recorder = RecorderProcess("--out", out, "--storage", storage, "--topics", *kinds, "/never_published")
    try:
        recorder.wait_for_lines([f"recording {t} " for t in kinds])
        wait_matched(publishers.values(), subscribers=2)
        started_ns = time.time_ns()
        for index in range(count):
            image, joints, stats = make_messages(index)
            for topic, msg in (("/fixed_camera/color/image_raw", image), ("/joint_states", joints),
                               ("/vla_pruner_policy/stats", stats), ("/wrist_camera/color/image_raw", image)):
                publishers[topic].publish(msg)
                sent[topic].append(msg)
        for topic, publisher in publishers.items():
            if topic != "/wrist_camera/color/image_raw":
                assert publisher.wait_for_all_acked(Duration(seconds=10)), topic
        # Every reliable message is now in the recorder's DDS queues, maybe not yet taken by it:
        # signal at once (best effort has no acknowledgement, so it gets a moment).
        time.sleep(0.2)
        code = recorder.stop(signum)
    finally:
        if recorder.proc.poll() is None:
            recorder.proc.kill()
    stopped_ns = time.time_ns()
    spin_until(ros_node, lambda: all(len(wire[t]) >= len(sent[t]) for t in kinds if t in RELIABLE_TOPICS))
    assert code == 0, recorder.output()
    assert (out / "metadata.yaml").is_file() and not (out / RESERVE_NAME).exists()

    with open_bag(out) as bag:
        read: dict[str, list] = {}
        for message in bag.messages():
            read.setdefault(message.topic, []).append(message)
        assert bag.info.storage == storage
    for topic in RELIABLE_TOPICS:
        got = [m.data for m in read[topic]]
        assert len(got) == len(sent[topic]), f"{topic}: {len(got)} of {len(sent[topic])}\n{recorder.output()}"
        # in order and bit-identical to what was published
        assert all(map(same_payload, got, wire[topic])), (topic, got, wire[topic])
        assert [deserialize_ros(m.data, m.msgtype) for m in read[topic]] == sent[topic], topic
        stamps = [m.timestamp_ns for m in read[topic]]
        assert stamps == sorted(stamps) and stopped_ns >= stamps[-1]
        if topic != "/instruction":
            assert stamps[0] >= started_ns  # receive time, not the (tiny) header stamps
    best_effort = [deserialize_ros(m.data, m.msgtype) for m in read["/wrist_camera/color/image_raw"]]
    assert best_effort and _is_subsequence(best_effort, sent["/wrist_camera/color/image_raw"])
    assert "/never_published" not in read

    with Reader(out) as reader:  # the offered QoS goes into the bag for ros2 bag play
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert qos["/joint_states"].reliability == QosReliability.RELIABLE
    assert qos["/wrist_camera/color/image_raw"].reliability == QosReliability.BEST_EFFORT
    assert qos["/instruction"].durability == QosDurability.TRANSIENT_LOCAL

    text = "\n".join(recorder.stdout)
    assert f"stopped ({signum.name})" in text
    assert "(best effort, volatile)" in text and "(reliable, transient local)" in text
    table_row = next(line for line in recorder.stdout if line.strip().startswith("/joint_states "))
    assert f" {count} " in table_row
    assert "not recorded (no publisher appeared): /never_published" in text


def same_payload(recorded: bytes, published: bytes) -> bool:
    """Equal bytes -- except that DDS may pad a serialized payload with zeros to a multiple of
    4 bytes on one delivery path and not on another (the latched message that reaches the
    late-joining recorder from the publisher's history is padded; the live copy that this
    process gets is not). The recorder stores exactly what it received."""
    short, long = sorted((recorded, published), key=len)
    padding = len(long) - len(short)
    return long[: len(short)] == short and (padding == 0 or (
        padding < 4 and len(long) % 4 == 0 and long[len(short):] == bytes(padding)))


RELIABLE_TOPICS = ("/fixed_camera/color/image_raw", "/joint_states", "/vla_pruner_policy/stats", "/instruction")


def spin_until(node, condition, timeout=10.0):
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    executor.remove_node(node)
    assert condition(), "this test's own subscriber did not get every message"


def _is_subsequence(part, whole) -> bool:
    items = iter(whole)
    return all(any(x == y for y in items) for x in part)


def _publish_when_recording(recorder, node, topic, count):
    """Publish ``count`` Strings once the recorder listens; returns their texts."""
    publisher = node.create_publisher(String, topic, RELIABLE)
    recorder.wait_for_lines([f"recording {topic} "])
    wait_matched([publisher])
    sent = []
    for index in range(count):
        publisher.publish(String(data=f"message {index}"))
        sent.append(f"message {index}")
    return publisher, sent


def _texts(path):
    with open_bag(path) as bag:
        return [bag.deserialize(m).data for m in bag.messages()]


def test_max_messages_stops_by_itself(tmp_path, ros_node):
    recorder = RecorderProcess("--out", tmp_path / "bag", "--topics", "/chatter", "--max-messages", 5)
    try:
        _, sent = _publish_when_recording(recorder, ros_node, "/chatter", 20)
        code = recorder.wait()
    finally:
        if recorder.proc.poll() is None:
            recorder.proc.kill()
    assert code == 0, recorder.output()
    assert "stopped (max-messages)" in "\n".join(recorder.stdout)
    assert _texts(tmp_path / "bag") == sent[:5]


def test_duration_stops_by_itself_with_an_empty_readable_bag(tmp_path):
    recorder = RecorderProcess("--out", tmp_path / "bag", "--storage", "sqlite3", "--topics", "/nobody",
                               "--duration", 1.0)
    code = recorder.wait()
    assert code == 0, recorder.output()
    assert "stopped (duration)" in "\n".join(recorder.stdout)
    with open_bag(tmp_path / "bag") as bag:
        assert bag.info.message_count == 0 and bag.info.topics == {}


def test_disk_full_during_recording_stops_with_a_readable_bag(tmp_path, ros_node):
    recorder = RecorderProcess("--out", tmp_path / "bag", "--topics", "/chatter", "--simulate-disk-full-after", 8)
    try:
        _, sent = _publish_when_recording(recorder, ros_node, "/chatter", 20)
        code = recorder.wait()  # the write error stops it; no signal needed
    finally:
        if recorder.proc.poll() is None:
            recorder.proc.kill()
    assert code == 1, recorder.output()
    errors = "\n".join(recorder.stderr)
    assert "No space left on device" in errors and "readable with the 8 messages" in errors
    assert _texts(tmp_path / "bag") == sent[:8]


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "bag"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    recorder = RecorderProcess("--out", out, "--topics", "/chatter")
    assert recorder.wait() == 1
    assert "already exists" in "\n".join(recorder.stderr)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not any("recording" in line for line in recorder.stdout)


def test_unwritable_output_is_refused_before_subscribing(tmp_path):
    (tmp_path / "file").write_text("x")
    recorder = RecorderProcess("--out", tmp_path / "file" / "bag", "--topics", "/chatter")
    assert recorder.wait() == 1
    assert "is not a directory" in "\n".join(recorder.stderr)

    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here for a read-only directory")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    result = subprocess.run(
        ["unshare", "-Urm", "sh", "-c",
         f"mount -t tmpfs -o ro,size=1m tmpfs {readonly} && exec {sys.executable} -m vla_pruner_ros.tools.cli "
         f"record --out {readonly / 'bag'} --topics /chatter"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot create bag directory" in result.stderr and "Read-only file system" in result.stderr
    assert "recording" not in result.stdout


def test_messages_waiting_in_dds_at_the_stop_are_written(tmp_path, ros_node):
    """In-process, so nothing takes the messages before the stop: they are all acknowledged
    (received by the recorder's DDS reader) but no callback has run yet. close() must take them."""
    import io

    count = 200
    output = io.StringIO()
    recorder = record.Recorder(record.RecordConfig(out=tmp_path / "bag", topics=["/chatter"], storage="sqlite3"),
                               out=output, err=output)
    recorder.open()
    publisher = ros_node.create_publisher(String, "/chatter", RELIABLE)
    deadline = time.monotonic() + 20
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        recorder.poll()  # discovery: the recorder subscribes once it sees the publisher
    assert publisher.get_subscription_count() == 1, output.getvalue()
    for index in range(count):
        publisher.publish(String(data=f"message {index}"))
    assert publisher.wait_for_all_acked(Duration(seconds=10))
    recorder.stop("SIGINT")
    assert recorder.close() == 0, output.getvalue()
    assert _texts(tmp_path / "bag") == [f"message {i}" for i in range(count)]
    assert "stopped (SIGINT)" in output.getvalue()


def test_burst_then_sigint_loses_nothing(tmp_path, ros_node):
    """A 1000-message burst, SIGINT right after it (no waiting for acknowledgements), 20 times:
    every message is in the bag. Five rounds of four recorders at once (two of each
    storage) keep the run short. Messages still in flight at the stop must be taken too: under
    load the transport drops part of a burst, and DDS resends it only at the publisher's next
    heartbeat (~3 s later)."""
    count, parallel, rounds = 1000, 4, 5
    results = []
    for round_index in range(rounds):
        runs = []
        for k in range(parallel):
            topic, storage = f"/burst_{round_index}_{k}", ("mcap", "sqlite3")[k % 2]
            out = tmp_path / f"bag_{round_index}_{k}"
            publisher = ros_node.create_publisher(String, topic, RELIABLE)
            runs.append((topic, storage, out, publisher,
                         RecorderProcess("--out", out, "--storage", storage, "--topics", topic)))
        try:
            for topic, _, _, publisher, recorder in runs:
                recorder.wait_for_lines([f"recording {topic} "], timeout=60)
                wait_matched([publisher])
                # Matched both ways (a reader that does not know the writer yet ignores its data):
                # one message acknowledged by the recorder before the burst.
                publisher.publish(String(data="-1"))
                assert publisher.wait_for_all_acked(Duration(seconds=30)), recorder.output()
            for topic, _, _, publisher, recorder in runs:
                for index in range(count):
                    publisher.publish(String(data=f"{index}"))
                recorder.proc.send_signal(signal.SIGINT)
            codes = [recorder.wait(timeout=60) for *_, recorder in runs]
        finally:
            for *_, recorder in runs:
                if recorder.proc.poll() is None:
                    recorder.proc.kill()
        for (topic, storage, out, publisher, recorder), code in zip(runs, codes):
            assert code == 0, recorder.output()
            texts = _texts(out)
            results.append((storage, len(texts)))
            # every message once; bags are in receive-time order, and a resent sample is received
            # after the ones that overtook it, so the order may differ from the publication order
            assert sorted(map(int, texts)) == list(range(-1, count)), (
                f"{storage} {topic}: {len(texts)} of {count + 1} kept; results so far {results}\n{recorder.output()}")
            ros_node.destroy_publisher(publisher)
    assert len(results) == parallel * rounds


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sigkilled_recording_is_recovered(tmp_path, ros_node, storage):
    """SIGKILL leaves no metadata.yaml (and MCAP no summary: no reader opens it); `vla-pruner bag
    recover` rebuilds a readable bag with every message the recorder had had time to flush
    (the writer flushes at least every second, also when idle)."""
    from vla_pruner_ros.bags import BagError

    out = tmp_path / "bag"
    recorder = RecorderProcess("--out", out, "--storage", storage, "--topics", "/chatter")
    try:
        publisher, sent = _publish_when_recording(recorder, ros_node, "/chatter", 300)
        assert publisher.wait_for_all_acked(Duration(seconds=30))
        deadline = time.monotonic() + 30  # the writer's periodic flush puts the tail in the file
        while time.monotonic() < deadline and not any("300 msgs" in line for line in recorder.stdout):
            time.sleep(0.1)
        time.sleep(2.0)
        recorder.proc.kill()
        recorder.wait()
    finally:
        if recorder.proc.poll() is None:
            recorder.proc.kill()
    assert not (out / "metadata.yaml").exists()
    if storage == "mcap":
        with pytest.raises(BagError, match="corrupt or truncated"):
            open_bag(out).__enter__()
    result = subprocess.run([sys.executable, "-m", "vla_pruner_ros.tools.cli", "bag", "recover", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recovered 300 messages on 1 topics (/chatter 300)" in result.stdout
    assert _texts(out) == sent
    assert (out / f"bag.{'mcap' if storage == 'mcap' else 'db3'}.damaged").is_file()
    # a closed bag needs no recovery: refused with one line, nothing changed
    again = subprocess.run([sys.executable, "-m", "vla_pruner_ros.tools.cli", "bag", "recover", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "needs no recovery" in again.stderr and "Traceback" not in again.stderr
