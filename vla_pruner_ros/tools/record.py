"""``vla-pruner record``: record ROS topics into a rosbag2 directory with rclpy and rosbags.

The same topics as ``record:=true`` on the launch file (``config/record_topics.yaml``), for
machines where ``ros2 bag`` is not installed. The bag is a standard rosbag2 directory (MCAP or
sqlite3) that ``ros2 bag info/play``, rosbags and the offline replay read.

How it works:

* Topics are subscribed to as soon as a publisher appears (the graph is polled), with the
  QoS that matches the publishers: reliable only if every publisher is reliable, transient-
  local only if every publisher offers it (so a latched instruction sent before the recorder
  started is recorded too).
* Subscriptions are raw: the CDR payload goes into the bag bit-identical, stamped with its
  receive time, like ``ros2 bag record``.
* ROS callbacks only queue the payload; a writer thread writes the queue, so a slow disk does
  not stall message intake.
* Each round of the main loop takes every message waiting in the subscriptions' DDS queues
  (not one per executor round), so a burst does not overflow them.
* On SIGINT/SIGTERM (or ``--duration``) it keeps taking until every topic is drained: each
  message the subscriptions had received is written, and so is what was still in flight
  when the stop came. A topic counts as drained once it delivers a message published after
  the stop, or once nothing arrived on it for ``DRAIN_QUIET_S`` (DDS resends a lost sample at
  the publisher's next heartbeat, 3 s by default), ``DRAIN_TIMEOUT_S`` at most: a stop takes
  up to 6.5 s unless every topic is still publishing.
  Then it stops subscribing, writes the whole queue, closes the bag and prints a table.
  A write error (disk full, ...) stops the recording with a clear message; the bag is
  closed and stays readable with what reached it (see ``vla_pruner_ros.bags.writer``).
* A recorder killed without a chance to close (SIGKILL, power loss) leaves a bag without
  ``metadata.yaml`` (and, for MCAP, without its summary): ``vla-pruner bag recover DIR``
  rebuilds a readable bag from the complete records in the file. The writer makes the data
  durable every second (sqlite3 commit, MCAP chunk), which bounds what such a kill loses.
"""
from __future__ import annotations

import argparse
import queue
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vla_pruner_ros.bags import DEFAULT_RESERVE_BYTES, STORAGES, BagWriteError, BagWriter, MessageTypeError
from vla_pruner_ros.bags.types import normalize_type, ros_message_class

NODE_NAME = "vla_pruner_recorder"
SUBSCRIPTION_DEPTH = 1000  # messages DDS holds for us until taken (KEEP_LAST drops beyond)
DISCOVERY_PERIOD_S = 0.2  # how often the graph is polled for new topics
# After a stop, a topic on which nothing arrived for this long is drained. A sample the transport
# dropped in a burst is sent again at the publisher's next heartbeat: every 3 s with Fast DDS's
# defaults (measured: the tail of a 1000-message burst arrived 2.98-3.04 s late, 1 burst in 8).
# Two heartbeats: on a loaded machine a 3.5 s wait once lost the 25-message tail of a burst.
DRAIN_QUIET_S = 6.5
DRAIN_TIMEOUT_S = 15.0  # after a stop, take arriving messages at most this long
TAKE_BATCH = 1000  # messages taken from one subscription per round of the main loop
MAX_QUEUED_BYTES = 1 << 30  # beyond this the writer is hopelessly behind: drop and count
INFINITE_NS = 2**63 - 1  # rmw's "infinite" duration


@dataclass
class RecordConfig:
    out: Path
    topics: list[str]
    storage: str = "mcap"
    duration_s: float | None = None
    max_messages: int | None = None
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    simulate_disk_full_after: int | None = None  # test hook: fail like a full disk after N messages

    def __post_init__(self):
        self.out = Path(self.out)
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        self.topics = normalize_topics(self.topics)
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration_s}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {self.max_messages}")
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve must be >= 0 bytes, got {self.reserve_bytes}")


def normalize_topics(topics) -> list[str]:
    """Absolute topic names, in order, without duplicates."""
    result = []
    for topic in topics:
        name = str(topic).strip()
        if not name or any(c.isspace() for c in name) or name == "/":
            raise ValueError(f"topic name {topic!r} is not a valid ROS topic name")
        name = name if name.startswith("/") else "/" + name
        if name not in result:
            result.append(name)
    if not result:
        raise ValueError("no topics to record; pass --topics or fill config/record_topics.yaml")
    return result


def default_out_dir(now: datetime | None = None) -> Path:
    return Path((now or datetime.now()).strftime("vla_pruner_%Y_%m_%d-%H_%M_%S"))


# -- QoS ---------------------------------------------------------------------------------------
def choose_qos(publisher_profiles):
    """The subscription QoS that receives from all of ``publisher_profiles`` (rclpy
    QoSProfiles of the publishers now on the topic)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    profiles = list(publisher_profiles)
    reliable = bool(profiles) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
    transient = bool(profiles) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=SUBSCRIPTION_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE)


def _bag_time(duration):
    from rosbags.interfaces import QosTime

    nanoseconds = int(getattr(duration, "nanoseconds", duration))
    nanoseconds = INFINITE_NS if nanoseconds < 0 else min(nanoseconds, INFINITE_NS)
    return QosTime(nanoseconds // 10**9, nanoseconds % 10**9)


def to_bag_qos(profile):
    """An rclpy QoSProfile as the rosbags Qos that goes into ``offered_qos_profiles``
    (``ros2 bag play`` uses it to publish with the recorded QoS)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability

    def member(enum, value):
        try:
            return enum(int(value))
        except ValueError:
            return enum.UNKNOWN

    return Qos(
        history=member(QosHistory, profile.history), depth=int(profile.depth),
        reliability=member(QosReliability, profile.reliability),
        durability=member(QosDurability, profile.durability),
        deadline=_bag_time(profile.deadline), lifespan=_bag_time(profile.lifespan),
        liveliness=member(QosLiveliness, profile.liveliness),
        liveliness_lease_duration=_bag_time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def _qos_text(profile) -> str:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    reliability = "reliable" if profile.reliability == ReliabilityPolicy.RELIABLE else "best effort"
    durability = "transient local" if profile.durability == DurabilityPolicy.TRANSIENT_LOCAL else "volatile"
    return f"{reliability}, {durability}"


# -- display -------------------------------------------------------------------------------------
def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def short_names(topics) -> dict[str, str]:
    """A short label per topic for the live line: the fewest leading or trailing name parts
    that no other topic shares (``/fixed_camera/color/image_raw`` -> ``fixed_camera``,
    ``/vla_pruner_policy/stats`` -> ``stats``)."""
    parts = {t: [p for p in t.split("/") if p] for t in topics}
    labels = {}
    for topic, mine in parts.items():
        candidates = []
        for k in range(1, len(mine) + 1):
            for side in ("head", "tail"):
                pick = (lambda names: names[:k]) if side == "head" else (lambda names: names[-k:])
                label = "/".join(pick(mine))
                if all("/".join(pick(other)) != label for t, other in parts.items() if t != topic):
                    candidates.append(label)
        labels[topic] = min(candidates, key=len) if candidates else topic
    return labels


def progress_line(elapsed_s: float, counts: dict[str, int], size_bytes: int, waiting: int, width: int = 0) -> str:
    """``[rec 12.3 s] 240 msgs 18.4 MB | joint_states 120 | ...``, cut to ``width`` if > 0."""
    total = sum(counts.values())
    labels = short_names(counts)
    parts = [f"[rec {elapsed_s:6.1f} s] {total} msgs {_megabytes(size_bytes)}"]
    parts += [f"{labels[topic]} {count}" for topic, count in counts.items()]
    if waiting:
        parts.append(f"waiting for {waiting} topic{'s' if waiting > 1 else ''}")
    line = " | ".join(parts)
    if width and len(line) > width:
        line = line[: max(width - 3, 0)] + "..."
    return line


@dataclass
class TopicStats:
    msgtype: str
    qos: str
    received: int = 0
    written: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0


def final_table(out: Path, storage: str, stats: dict[str, TopicStats], never_seen: list[str],
                size_bytes: int, elapsed_s: float) -> str:
    written = sum(s.written for s in stats.values())
    lines = [f"bag {str(out)!r} ({storage}): {len(stats)} topics, {written} messages, "
             f"{elapsed_s:.1f} s, {_megabytes(size_bytes)} on disk"]
    if stats:
        width = max(len("topic"), *(len(t) for t in stats))
        type_width = max(len("type"), *(len(s.msgtype) for s in stats.values()))
        lines.append(f"  {'topic':<{width}}  {'type':<{type_width}}  {'msgs':>7}  {'MB':>8}  {'Hz':>6}  qos")
        for topic, s in stats.items():
            span = (s.last_ns - s.first_ns) / 1e9
            rate = (s.written - 1) / span if s.written > 1 and span > 0 else 0.0
            lines.append(f"  {topic:<{width}}  {s.msgtype:<{type_width}}  {s.written:>7}  "
                         f"{s.bytes / 1e6:>8.2f}  {rate:>6.1f}  {s.qos}")
    if never_seen:
        lines.append(f"  not recorded (no publisher appeared): {', '.join(never_seen)}")
    return "\n".join(lines)


# -- the recorder ----------------------------------------------------------------------------------
@dataclass
class _Shared:
    """State shared between ROS callbacks (main thread), the writer thread and the loop."""
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    queued_bytes: int = 0
    accepted: int = 0  # messages taken into the queue
    dropped: int = 0  # messages not written (writer failed or hopelessly behind)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_ns: int = 0  # wall-clock time of the stop request
    write_error: BagWriteError | None = None


class Recorder:
    """Records ``config.topics`` into ``config.out`` until stopped; see the module docstring."""

    def __init__(self, config: RecordConfig, out=sys.stdout, err=sys.stderr):
        self.config = config
        self.out, self.err = out, err
        self.bag: BagWriter | None = None
        self.stats: dict[str, TopicStats] = {}
        self.shared = _Shared()
        self.stop_reason = ""
        self._subscriptions = {}
        self._skipped: set[str] = set()  # topics that cannot be recorded (warned once)
        self._last_arrival: dict[str, float] = {}  # topic -> time.monotonic() of its newest message
        self._context = self._node = self._executor = self._writer_thread = None
        self._started = self._next_discovery = self._next_progress = 0.0
        self._tty = False
        self._progress_shown = 0  # characters of the live line now on the terminal

    # -- messages --------------------------------------------------------------------------
    def _make_callback(self, topic: str):
        shared, stats, limit = self.shared, self.stats[topic], self.config.max_messages

        def on_message(data: bytes, info) -> None:
            self._last_arrival[topic] = time.monotonic()
            received_ns = int(info.get("received_timestamp") or 0) or time.time_ns()
            with shared.lock:
                if limit is not None and shared.accepted >= limit:
                    return  # --max-messages reached: nothing more is wanted
                if shared.write_error is not None or shared.queued_bytes > MAX_QUEUED_BYTES:
                    shared.dropped += 1
                    return
                shared.accepted += 1
                shared.queued_bytes += len(data)
                stats.received += 1
                if limit is not None and shared.accepted >= limit:
                    self._request_stop("max-messages")
            shared.queue.put((topic, received_ns, data))

        return on_message

    def _write_loop(self) -> None:
        """Writer thread: write queued messages until the end-of-recording marker."""
        shared = self.shared
        while True:
            try:
                item = shared.queue.get(timeout=0.25)
            except queue.Empty:
                try:
                    self.bag.flush_if_due()  # the tail goes to the file even when nothing more comes
                except BagWriteError as error:
                    with shared.lock:
                        shared.write_error = shared.write_error or error
                    self._request_stop("write error")
                continue
            if item is None:
                return
            topic, received_ns, data = item
            with shared.lock:
                shared.queued_bytes -= len(data)
                failed = shared.write_error is not None
            if failed:
                continue  # counted as lost in the final report (received - written)
            try:
                self.bag.write(topic, received_ns, data)
            except BagWriteError as error:
                with shared.lock:
                    shared.write_error = error  # the bag was closed with what reached it
                self._request_stop("write error")
                continue
            stats = self.stats[topic]
            stats.first_ns = stats.first_ns or received_ns
            stats.last_ns = received_ns

    def _request_stop(self, reason: str) -> None:
        if not self.shared.stop.is_set():
            self.stop_reason = reason
            self.shared.stop_ns = time.time_ns()
            self.shared.stop.set()

    @staticmethod
    def _take(subscription):
        """(payload, message info) of the next message waiting in ``subscription``'s DDS queue,
        or None. What the executor does for one callback, without a wait set round per message."""
        with subscription.handle:
            return subscription.handle.take_message(subscription.msg_type, subscription.raw)

    def _take_ready(self) -> int:
        """Take (up to TAKE_BATCH per topic) every message already waiting; returns how many."""
        taken = 0
        for subscription in list(self._subscriptions.values()):
            for _ in range(TAKE_BATCH):
                result = self._take(subscription)
                if result is None:
                    break
                subscription.callback(*result)
                taken += 1
        return taken

    # -- topics -------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        """Print a line; on a terminal, first wipe the progress line that is being overwritten."""
        if self._progress_shown:
            print("\r" + " " * self._progress_shown + "\r", end="", file=self.out, flush=True)
            self._progress_shown = 0
        print(text, file=self.err if error else self.out, flush=True)

    def _skip(self, topic: str, why: str) -> None:
        if topic not in self._skipped:
            self._skipped.add(topic)
            self._say(f"[record] warning: not recording {topic}: {why}", error=True)

    def _discover(self) -> None:
        """Subscribe to requested topics that now have a publisher."""
        pending = [t for t in self.config.topics if t not in self._subscriptions and t not in self._skipped]
        if not pending:
            return
        graph = dict(self._node.get_topic_names_and_types())
        for topic in pending:
            if topic not in graph:
                continue
            types = graph[topic]
            if len(types) != 1:
                self._skip(topic, f"it is published with several types ({', '.join(types)})")
                continue
            publishers = self._node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue  # only subscribers so far: no QoS to match yet
            self._subscribe(topic, normalize_type(types[0]), publishers)

    def _subscribe(self, topic: str, msgtype: str, publishers) -> None:
        try:
            message_class = ros_message_class(msgtype)
            bag_hash = self.bag.type_hash(msgtype)
        except MessageTypeError as error:
            self._skip(topic, str(error))
            return
        offered = {str(p.topic_type_hash) for p in publishers}
        offered = {h for h in offered if h.startswith("RIHS01_") and h[len("RIHS01_"):].strip("0")}
        if offered and offered != {bag_hash}:
            self._skip(topic, f"its publishers' {msgtype} (hash {', '.join(sorted(offered))}) differs from the "
                              f"definition this recorder knows ({bag_hash}); the bag could not be decoded")
            return
        qos = choose_qos(p.qos_profile for p in publishers)
        try:
            self.bag.add_topic(topic, msgtype, offered_qos=[to_bag_qos(p.qos_profile) for p in publishers])
        except BagWriteError as error:
            with self.shared.lock:
                self.shared.write_error = self.shared.write_error or error
            self._request_stop("write error")
            return
        self.stats[topic] = TopicStats(msgtype, _qos_text(qos))
        self._last_arrival[topic] = time.monotonic()  # what is in flight may still come
        self._subscriptions[topic] = self._node.create_subscription(
            message_class, topic, self._make_callback(topic), qos, raw=True)
        self._say(f"[record] recording {topic} [{msgtype}] ({_qos_text(qos)})")

    # -- lifecycle: open() -> poll() until stopped -> close() ------------------------------------
    def open(self) -> None:
        """Create the bag (before any subscription, so a bad --out fails here with nothing
        recorded), then the ROS node and the writer thread. Raises BagWriteError."""
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        config = self.config
        self.bag = BagWriter(config.out, config.storage, reserve_bytes=config.reserve_bytes,
                             simulate_disk_full_after=config.simulate_disk_full_after).open()
        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._writer_thread = threading.Thread(target=self._write_loop, name="bag-writer", daemon=True)
        self._writer_thread.start()
        self._node = rclpy.create_node(NODE_NAME, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._started = time.monotonic()
        self._tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._next_discovery = self._started
        self._next_progress = self._started + (0.5 if self._tty else 5.0)
        print(f"[record] writing {config.storage} bag {str(config.out)!r}; topics: {', '.join(config.topics)}",
              file=self.out, flush=True)

    @property
    def stopped(self) -> bool:
        return self.shared.stop.is_set()

    def stop(self, reason: str) -> None:
        """Ask the recording to end (signal handlers call this); close() does the rest."""
        self._request_stop(reason)

    def poll(self, timeout_s: float = 0.05) -> None:
        """One round of the main loop: stop conditions, discovery, progress, one callback."""
        now = time.monotonic()
        if self.config.duration_s is not None and now - self._started >= self.config.duration_s:
            self._request_stop("duration")
            return
        if now >= self._next_discovery:
            self._discover()
            self._next_discovery = now + DISCOVERY_PERIOD_S
        if now >= self._next_progress:
            self._print_progress(now - self._started)
            self._next_progress = now + (0.5 if self._tty else 5.0)
        self._executor.spin_once(timeout_sec=timeout_s)  # waits for (and handles) one message
        self._take_ready()

    def close(self) -> int:
        """Take the messages that had already arrived, stop subscribing, write the queue, close
        the bag and print the table. Returns 0, or 1 when writing failed."""
        import rclpy

        self._say(f"[record] stopping ({self.stop_reason or 'stopped'}): writing what was received, closing the bag")
        try:
            self._drain()
            for subscription in self._subscriptions.values():
                self._node.destroy_subscription(subscription)
        finally:
            self.shared.queue.put(None)  # the writer ends after everything queued before this
            self._writer_thread.join()
            self._node.destroy_node()
            rclpy.shutdown(context=self._context)
        return self._finish(time.monotonic() - self._started)

    def run(self) -> int:
        """Record until a signal, --duration, --max-messages or a write error."""
        previous_handlers = self._install_signal_handlers()  # from now on a signal closes cleanly
        try:
            try:
                self.open()
            except BagWriteError as error:
                print(f"vla-pruner record: error: {error}", file=self.err, flush=True)
                return 1
            while not self.stopped:
                self.poll()
            return self.close()
        finally:
            if self.bag is not None and not self.bag.closed:
                try:
                    self.bag.close()  # after an unexpected exception: still leave a readable bag
                except BagWriteError:
                    pass
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self) -> dict:
        def on_signal(signum, frame):
            # Only set a flag: printing here could re-enter a print the main thread is in.
            # A second signal while closing changes nothing: the bag is closed either way.
            self._request_stop(signal.Signals(signum).name)

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        return previous

    def _drain(self) -> None:
        """Take what the subscriptions received before the stop, and what was in flight then:
        messages wait in the DDS queues until taken, and destroying the subscriptions would
        discard them. A topic is drained when it delivers a message published after the stop
        (everything its publisher sent before has arrived: reliable delivery is in order), or
        when nothing arrived on it for DRAIN_QUIET_S since the stop and since its last message
        (a whole burst can be dropped by the transport and resent at the next heartbeat, so
        even a topic that was silent before the stop gets that long)."""
        if self.stop_reason in ("max-messages", "write error"):
            return  # nothing more is wanted (or can be written)
        stop_ns, started = self.shared.stop_ns, time.monotonic()
        pending = dict(self._subscriptions)
        while pending and self.shared.write_error is None and time.monotonic() - started < DRAIN_TIMEOUT_S:
            for topic, subscription in list(pending.items()):
                while (result := self._take(subscription)) is not None:
                    subscription.callback(*result)
                    if int(result[1].get("source_timestamp") or 0) > stop_ns:
                        del pending[topic]
                        break
            now = time.monotonic()
            for topic in [t for t in pending if now - max(self._last_arrival[t], started) >= DRAIN_QUIET_S]:
                del pending[topic]
            if pending:
                time.sleep(0.005)

    def _print_progress(self, elapsed: float) -> None:
        counts = {topic: s.received for topic, s in self.stats.items()}
        waiting = len(self.config.topics) - len(self._subscriptions) - len(self._skipped)
        try:
            size = self.bag.disk_usage()
        except OSError:
            size = 0
        if self._tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            line = progress_line(elapsed, counts, size, waiting, width)
            print("\r" + line.ljust(self._progress_shown), end="", file=self.out, flush=True)
            self._progress_shown = max(len(line), self._progress_shown)
        else:
            print(progress_line(elapsed, counts, size, waiting), file=self.out, flush=True)

    def _finish(self, elapsed: float) -> int:
        bag, shared = self.bag, self.shared
        close_error = None
        try:
            bag.close()
        except BagWriteError as error:
            close_error = error
        for topic, stats in self.stats.items():
            stats.written = bag.counts.get(topic, 0)
            stats.bytes = bag.bytes_per_topic.get(topic, 0)
        never_seen = [t for t in self.config.topics if t not in self.stats]
        try:
            size = bag.disk_usage()
        except OSError:
            size = 0
        reason = self.stop_reason or "stopped"
        print(f"[record] stopped ({reason}); bag closed", file=self.out, flush=True)
        in_order = {t: self.stats[t] for t in self.config.topics if t in self.stats}
        print(final_table(self.config.out, self.config.storage, in_order, never_seen, size, elapsed),
              file=self.out, flush=True)
        error = shared.write_error or close_error
        if error is not None:
            lost = shared.dropped + sum(s.received - s.written for s in self.stats.values())
            print(f"vla-pruner record: error: {error}"
                  + (f" {lost} received messages were not written." if lost > 0 else ""),
                  file=self.err, flush=True)
            return 1
        if shared.dropped:
            print(f"[record] warning: {shared.dropped} messages were dropped because the disk could not keep up",
                  file=self.err, flush=True)
        return 0


# -- command line ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", type=Path, default=None, metavar="DIR",
                        help="bag directory to create; must not exist (default: ./vla_pruner_<date-time>)")
    parser.add_argument("--storage", "-s", choices=STORAGES, default="mcap", help="rosbag2 storage (default: mcap)")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", default=None,
                        help="topics to record (default: those of config/record_topics.yaml)")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-messages", type=int, default=None, metavar="N",
                        help="stop after N messages (all topics together)")
    parser.add_argument("--reserve-mb", type=float, default=DEFAULT_RESERVE_BYTES / 2**20, metavar="MB",
                        help="disk space held back so the bag can still be closed when the disk fills up "
                             "(default: %(default).0f)")
    # Test hook: behave as if the disk filled up after N written messages.
    parser.add_argument("--simulate-disk-full-after", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    try:
        import rclpy  # noqa: F401 - fail early with a clear message rather than a traceback
    except ImportError as error:
        print(f"vla-pruner record: error: rclpy is not available ({error}); source .env.sh or a ROS 2 setup",
              file=sys.stderr)
        return 2
    topics = args.topics
    if topics is None:
        from vla_pruner_ros.control.launch_logic import record_topics

        try:
            topics = record_topics()
        except (OSError, ValueError) as error:
            print(f"vla-pruner record: error: cannot read the default topic list ({error}); pass --topics",
                  file=sys.stderr)
            return 2
    try:
        config = RecordConfig(
            out=args.out or default_out_dir(), topics=topics, storage=args.storage, duration_s=args.duration,
            max_messages=args.max_messages, reserve_bytes=int(args.reserve_mb * 2**20),
            simulate_disk_full_after=args.simulate_disk_full_after)
    except ValueError as error:
        print(f"vla-pruner record: error: {error}", file=sys.stderr)
        return 2
    return Recorder(config).run()
