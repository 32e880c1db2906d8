"""Write rosbag2 directories (MCAP or sqlite3) that ``ros2 bag info/play`` and rosbags read.

:class:`BagWriter` wraps the rosbags writer with what a recorder needs:

* clear errors (:class:`BagWriteError`) for an existing output, an unwritable directory and
  a failed write, naming the path and the operating-system reason;
* thread safety (ROS callbacks may add topics while another thread writes);
* a bag that stays readable when the disk fills up. The writer holds back ``reserve_bytes``
  of disk space in a file inside the bag directory; when a write fails it frees that space,
  drops the partial write and closes the bag (summary + ``metadata.yaml``), so every message
  that reached the bag before the failure can be read. sqlite3 bags are committed every
  ``commit_interval_s`` or ``commit_bytes``, whichever comes first: sqlite rolls the open
  transaction back on a full disk, so that bounds what a failure loses;
* a bag that can be recovered when the writer is killed: MCAP chunks are closed and flushed
  to the file at least every ``commit_interval_s`` (rosbags alone keeps up to 1 MiB in
  memory), sqlite3 is committed as above, so ``bags.recover`` finds all but the last
  ``commit_interval_s`` of messages in the file.
"""
from __future__ import annotations

import errno as errno_codes
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rosbags.interfaces import Qos
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.typesys.store import Typestore

from .errors import BagWriteError, MessageTypeError
from .types import message_definition, normalize_type, serialize, typestore

STORAGES = ("mcap", "sqlite3")
_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
RESERVE_NAME = ".vla_pruner_reserve"
DEFAULT_RESERVE_BYTES = 8 << 20  # an MCAP chunk (1 MiB) + a large image + summary, with margin
BAG_VERSION = 9  # rosbag2 metadata version of Jazzy/Kilted


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _errno_of(err: BaseException) -> int | None:
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, sqlite3.Error) and "full" in str(err).lower():
        return errno_codes.ENOSPC
    return None


def ros_type_name(msg) -> str:
    """``pkg/msg/Name`` of a rosbags message object or an rclpy message."""
    if getattr(msg, "__msgtype__", None):
        return normalize_type(msg.__msgtype__)
    module = type(msg).__module__.split(".")  # rclpy: pkg.msg._name -> pkg/msg/Name
    if len(module) >= 2 and module[1] == "msg":
        return f"{module[0]}/msg/{type(msg).__name__}"
    raise MessageTypeError(f"cannot tell the ROS message type of a {type(msg).__name__}; pass msgtype=")


class BagWriter:
    """One rosbag2 directory being written. Use as a context manager, or open()/close().

    >>> with BagWriter("episode_0", storage="mcap") as bag:
    ...     bag.add_topic("/instruction", "std_msgs/msg/String")
    ...     bag.write("/instruction", time.time_ns(), cdr_bytes)
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", *, store: Typestore | None = None,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES, commit_interval_s: float = 1.0,
                 commit_bytes: int = 8 << 20, simulate_disk_full_after: int | None = None):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        if commit_interval_s <= 0:
            raise ValueError(f"commit_interval_s must be > 0, got {commit_interval_s}")
        if commit_bytes <= 0:
            raise ValueError(f"commit_bytes must be > 0, got {commit_bytes}")
        self.path = Path(path)
        self.storage = storage
        self.reserve_bytes = int(reserve_bytes)
        self.commit_interval_s = float(commit_interval_s)
        self.commit_bytes = int(commit_bytes)
        self._store = store or typestore()
        self._writer: Writer | None = None
        self._connections: dict[str, object] = {}  # topic -> rosbags Connection
        self._types: dict[str, str] = {}  # topic -> msgtype
        self._lock = threading.RLock()
        self._reserve_path = self.path / RESERVE_NAME
        self._last_commit = time.monotonic()
        self._committed: tuple | None = None  # sqlite3: what the last commit made durable
        self.counts: dict[str, int] = {}  # messages written per topic
        self.bytes_per_topic: dict[str, int] = {}  # payload bytes written per topic
        # Test hook: after this many messages, fail every write as a full disk would.
        self.simulate_disk_full_after = simulate_disk_full_after
        self.error: BagWriteError | None = None  # the failure that stopped writing, if any
        self.closed = False

    # -- opening -------------------------------------------------------------------------------
    def open(self) -> BagWriter:
        """Create the bag directory and its storage file, and reserve disk space. Fails with
        BagWriteError (nothing left behind) when the output exists or cannot be written."""
        if os.path.lexists(self.path):
            raise BagWriteError(
                f"output {str(self.path)!r} already exists; choose another --out or remove it first",
                errno_codes.EEXIST)
        parent = next((p for p in self.path.absolute().parents if os.path.lexists(p)), None)
        if parent is not None and not parent.is_dir():
            raise BagWriteError(f"cannot create bag {str(self.path)!r}: {str(parent)!r} is not a directory",
                                errno_codes.ENOTDIR)
        writer = Writer(self.path, version=BAG_VERSION, storage_plugin=_PLUGINS[self.storage])
        try:
            writer.open()
            self._writer = writer
            if self.storage == "sqlite3":
                self._share_connection(writer.storage)
            self._reserve_space()
        except (OSError, sqlite3.Error, WriterError) as err:
            self._writer = None
            where = (f"cannot write bag {str(self.path)!r}" if self.path.is_dir()
                     else f"cannot create bag directory {str(self.path)!r}")
            self._remove_partial_bag(writer)
            raise BagWriteError(f"{where}: {_reason(err)}", _errno_of(err)) from None
        self._snapshot()
        return self

    def _remove_partial_bag(self, writer: Writer) -> None:
        """Undo a failed open(): remove the files it made, then the directory if it is empty
        (never anything else, should someone else have made the directory meanwhile)."""
        storage = writer.storage
        if storage is not None:
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - the open() error is the one to report
                pass
            for leftover in (storage.path, Path(f"{storage.path}-journal")):
                leftover.unlink(missing_ok=True)
        self._release_reserve()
        try:
            self.path.rmdir()
        except OSError:
            pass

    @staticmethod
    def _share_connection(storage) -> None:
        """Python's sqlite3 binds a connection to the thread that made it; a recorder opens the
        bag in one thread and writes from another. Reconnect without that check -- every use
        is serialised by this writer's lock. (The schema rosbags created is committed.)"""
        storage.conn.close()
        storage.conn = sqlite3.connect(f"file:{storage.path}", uri=True, check_same_thread=False)
        storage.cursor = storage.conn.cursor()

    def _reserve_space(self) -> None:
        if self.reserve_bytes == 0:
            return
        with open(self._reserve_path, "wb") as file:
            try:
                os.posix_fallocate(file.fileno(), 0, self.reserve_bytes)
            except OSError as err:
                if err.errno not in (errno_codes.EOPNOTSUPP, errno_codes.EINVAL):
                    if err.errno == errno_codes.ENOSPC:
                        err.strerror = (f"not enough free space for the {self.reserve_bytes / 2**20:.1f} MiB "
                                        f"kept in reserve to close the bag")
                    raise
                file.write(bytes(self.reserve_bytes))  # filesystem without fallocate
            file.flush()
            os.fsync(file.fileno())

    def _release_reserve(self) -> None:
        try:
            self._reserve_path.unlink()
        except OSError:
            pass  # not there (or gone with its directory)

    # -- topics and messages -------------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, *, offered_qos: Sequence[Qos] = ()) -> None:
        """Declare a topic (once) with its type; its definition and hash go into the bag."""
        msgtype = normalize_type(msgtype)
        with self._lock:
            self._check_writable()
            if topic in self._types:
                if self._types[topic] != msgtype:
                    raise ValueError(f"topic {topic!r} was added as {self._types[topic]}, not {msgtype}")
                return
            msgdef, type_hash = message_definition(self._store, msgtype)
            try:
                self._connections[topic] = self._writer.add_connection(
                    topic, msgtype, msgdef=msgdef, rihs01=type_hash, offered_qos_profiles=list(offered_qos))
            except (OSError, sqlite3.Error) as err:
                self._fail(err, f"adding topic {topic}")
            self._types[topic] = msgtype
            self.counts[topic] = 0
            self.bytes_per_topic[topic] = 0
        if self.storage == "sqlite3":
            self.flush()  # a rolled-back transaction must never lose a topic's definition

    @property
    def bytes_written(self) -> int:
        """Payload bytes written, all topics together."""
        return sum(self.bytes_per_topic.values())

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type of every added topic."""
        return dict(self._types)

    def type_hash(self, msgtype: str) -> str:
        """The RIHS01 hash this bag records for ``msgtype`` (to compare with a publisher's)."""
        with self._lock:
            return message_definition(self._store, msgtype)[1]

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Append one serialised (CDR) message. Raises BagWriteError when the write fails; the
        bag is then closed with what was written before, and later writes raise too."""
        with self._lock:
            self._check_writable()
            connection = self._connections.get(topic)
            if connection is None:
                raise ValueError(f"topic {topic!r} was not added; call add_topic first")
            writer = self._writer
            if self.simulate_disk_full_after is not None and sum(self.counts.values()) >= self.simulate_disk_full_after:
                self._fail(OSError(errno_codes.ENOSPC, "No space left on device (simulated)"),
                           f"writing a {topic} message")
            position = self._file_position()
            try:
                writer.write(connection, int(timestamp_ns), data)
            except (OSError, sqlite3.Error) as err:
                self._fail(err, f"writing a {topic} message", position=position, pending=(topic, timestamp_ns, data))
            self.counts[topic] += 1
            self.bytes_per_topic[topic] += len(data)
            if self.storage == "mcap" and time.monotonic() - self._last_commit >= self.commit_interval_s:
                self._flush_chunk()
            if self.storage == "sqlite3" and (
                    time.monotonic() - self._last_commit >= self.commit_interval_s
                    or self.bytes_written - sum(self._committed[4].values()) >= self.commit_bytes):
                self.flush()

    def write_message(self, topic: str, timestamp_ns: int, msg, msgtype: str | None = None) -> None:
        """Serialise a message (rosbags object or rclpy message) and write it, adding the
        topic on first use."""
        msgtype = normalize_type(msgtype) if msgtype else ros_type_name(msg)
        if topic not in self._types:
            self.add_topic(topic, msgtype)
        self.write(topic, timestamp_ns, serialize(msg, msgtype, self._store))

    def flush(self) -> None:
        """Put what was written so far into the file (sqlite3: commit; MCAP: write the pending
        chunk), so that a killed writer leaves it there for ``bags.recover``."""
        with self._lock:
            self._check_writable()
            if self.storage != "sqlite3":
                self._flush_chunk()
                return
            try:
                self._writer.storage.conn.commit()
            except sqlite3.Error as err:
                self._fail(err, "committing to the database")
            self._snapshot()

    def flush_if_due(self) -> None:
        """flush() when something is unflushed and the last flush is ``commit_interval_s`` old
        (a recorder calls this while idle, so the tail of a recording does not wait in memory)."""
        with self._lock:
            if self._writer is None or self.error is not None:
                return
            storage = self._writer.storage
            pending = (storage.conn.in_transaction if self.storage == "sqlite3" else storage.chunk.bio.tell() > 0)
            if pending and time.monotonic() - self._last_commit >= self.commit_interval_s:
                self.flush()

    def _flush_chunk(self) -> None:
        """MCAP: write the pending chunk to the file now and flush it to the OS, so a killed
        writer leaves it in the file."""
        storage = self._writer.storage
        position = self._file_position()
        try:
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        except OSError as err:
            if storage.chunk.bio.tell():
                # close_chunk() failed before it recorded the chunk: cut the partial record off;
                # close() writes the same chunk again. (A failed flush() keeps its data buffered
                # for close() to write once the reserve is freed.)
                try:
                    storage.bio.seek(position)
                    storage.bio.truncate()
                except OSError:
                    pass
            self._fail(err, "writing a chunk to the MCAP file")
        self._last_commit = time.monotonic()

    def _snapshot(self) -> None:
        writer = self._writer
        self._last_commit = time.monotonic()
        self._committed = (dict(writer.counts), writer.min_timestamp, writer.max_timestamp,
                           dict(self.counts), dict(self.bytes_per_topic))

    def disk_usage(self) -> int:
        """Bytes the bag's files take on disk now (without the reserve)."""
        total = 0
        for path in self.path.glob("*"):
            if path.name != RESERVE_NAME and path.is_file():
                total += path.stat().st_size
        return total

    # -- closing and failures ------------------------------------------------------------------
    def close(self) -> None:
        """Write the summary and metadata.yaml. Safe to call twice and after a failure."""
        with self._lock:
            if self.closed or self._writer is None:
                self.closed = True
                return
            self._release_reserve()
            writer, self._writer = self._writer, None
            self.closed = True
            try:
                writer.close()
            except (OSError, sqlite3.Error, WriterError) as err:
                try:
                    writer.abort()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise BagWriteError(
                    f"could not close bag {str(self.path)!r}: {_reason(err)}; the storage file may need "
                    f"'ros2 bag reindex'", _errno_of(err)) from None

    def _check_writable(self) -> None:
        if self.error is not None:
            raise BagWriteError(f"bag {str(self.path)!r} is closed after an earlier error: {self.error}",
                                self.error.errno)
        if self._writer is None:
            raise BagWriteError(f"bag {str(self.path)!r} is not open")

    def _file_position(self) -> int | None:
        bio = getattr(getattr(self._writer, "storage", None), "bio", None)  # MCAP file object
        return bio.tell() if bio is not None else None

    def _fail(self, err: BaseException, doing: str, position: int | None = None, pending=None):
        """Stop writing after ``err``: keep every message that reached the bag, close it, and
        raise BagWriteError saying what happened."""
        writer = self._writer
        self._release_reserve()  # room for the summary, metadata.yaml and the last commit
        if self.storage == "mcap" and pending is not None:
            # rosbags has already added the message to its in-memory chunk; the failure came
            # from flushing that chunk. Cut the partial chunk off the file: close() writes the
            # whole chunk again, so the message is kept.
            bio = getattr(writer.storage, "bio", None)
            if bio is not None and position is not None:
                try:
                    bio.seek(position)
                    bio.truncate()
                except OSError:
                    pass  # the chunk index still points at the rewritten chunk
            topic, timestamp_ns, data = pending
            connection = self._connections[topic]
            writer.counts[connection.id] += 1
            writer.min_timestamp = min(writer.min_timestamp, int(timestamp_ns))
            writer.max_timestamp = max(writer.max_timestamp, int(timestamp_ns))
            self.counts[topic] += 1
            self.bytes_per_topic[topic] += len(data)
        if self.storage == "sqlite3":
            connection = writer.storage.conn
            if not connection.in_transaction and self._committed is not None:
                # sqlite rolled the whole transaction back: only the last commit is in the file.
                counts, first, last, topic_counts, topic_bytes = self._committed
                writer.counts.update({cid: counts.get(cid, 0) for cid in writer.counts})
                writer.min_timestamp, writer.max_timestamp = first, last
                self.counts.update({topic: topic_counts.get(topic, 0) for topic in self.counts})
                self.bytes_per_topic.update({topic: topic_bytes.get(topic, 0) for topic in self.bytes_per_topic})
        reason = _reason(err)
        error = BagWriteError(
            f"recording to {str(self.path)!r} stopped while {doing}: {reason}", _errno_of(err))
        try:
            self.close()
        except BagWriteError as close_error:
            error = BagWriteError(f"{error}; {close_error}", error.errno)
        else:
            kept = sum(self.counts.values())
            error = BagWriteError(f"{error}. The bag was closed and is readable with the {kept} messages "
                                  f"that reached it.", error.errno)
        self.error = error
        raise error

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
