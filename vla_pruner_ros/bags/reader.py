"""Open rosbag2 bags (MCAP or sqlite3) with clear errors, list their topics, read messages.

Accepts a rosbag2 directory (``metadata.yaml`` + storage files), or a single ``.mcap`` /
``.db3`` file. A directory whose ``metadata.yaml`` is missing (a recorder that was killed) is
read from its one storage file when that file is readable. Every failure -- missing path, not
a bag, corrupt or truncated file, missing topic, unexpected type -- raises :class:`BagError`
with a message that says what was expected and what was found, never a raw traceback.
"""
from __future__ import annotations

import sqlite3
import struct
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import TypesysError, get_types_from_idl, get_types_from_msg
from rosbags.typesys.store import Typestore

from .errors import BagError, MessageTypeError
from .types import ensure_types, referenced_types, typestore

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
# What rosbags and its storage back-ends raise on a damaged file.
_READ_ERRORS = (ReaderError, OSError, sqlite3.Error, struct.error, EOFError, KeyError, IndexError,
                ValueError, TypeError, AssertionError)
try:
    import apsw

    _READ_ERRORS = _READ_ERRORS + (apsw.Error,)
except ImportError:  # pragma: no cover - rosbags depends on apsw
    pass


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    timestamp_ns: int  # the bag's log time (receive time for ros2 bag record and ours)
    data: bytes  # CDR payload, exactly as published


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    path: Path
    storage: str  # "mcap" or "sqlite3"
    topics: dict[str, TopicSummary] = field(default_factory=dict)
    message_count: int = 0
    start_ns: int = 0  # first message's timestamp (0 when empty)
    end_ns: int = 0  # last message's timestamp (0 when empty)
    size_bytes: int = 0  # storage files on disk
    recovered: bool = False  # read from the storage file alone (metadata.yaml missing)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.message_count else 0.0

    def listing(self) -> str:
        """A ``ros2 bag info``-like table of topics, types and counts."""
        storage = self.storage + (", recovered without metadata.yaml" if self.recovered else "")
        head = (f"bag {str(self.path)!r} ({storage}): {len(self.topics)} topics, {self.message_count} messages, "
                f"{self.duration_s:.2f} s, {self.size_bytes / 1e6:.2f} MB")
        if not self.topics:
            return head + "\n  (no topics)"
        width = max(len(name) for name in self.topics)
        type_width = max(len(t.msgtype) for t in self.topics.values())
        rows = [f"  {t.name:<{width}}  {t.msgtype:<{type_width}}  {t.count:>7} msgs"
                for t in sorted(self.topics.values(), key=lambda t: t.name)]
        return "\n".join([head, *rows])

    def __str__(self) -> str:
        return self.listing()


def _storage_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())


def _corrupt(path: Path, err: BaseException, doing: str = "open") -> BagError:
    reason = str(err).strip() or type(err).__name__
    return BagError(f"cannot {doing} bag {str(path)!r}: it is corrupt or truncated ({reason})")


class BagReader:
    """An open bag. Use :func:`open_bag` (or this class as a context manager)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader: Reader | None = None
        self.info: BagInfo | None = None
        self.typestore: Typestore | None = None

    def open(self) -> BagReader:
        path = self.path
        if not path.exists():
            raise BagError(f"no bag at {str(path)!r}: the path does not exist")
        target, recovered = path, False
        if path.is_dir():
            if not (path / "metadata.yaml").is_file():
                files = _storage_files(path)
                if len(files) != 1:
                    found = ", ".join(p.name for p in sorted(path.iterdir())[:10]) or "nothing"
                    raise BagError(
                        f"{str(path)!r} is not a rosbag2 directory: it has no metadata.yaml and "
                        f"{'several' if files else 'no'} .mcap/.db3 storage files (it holds: {found})")
                target, recovered = files[0], True
        elif path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f"{str(path)!r} is not a bag: expected a rosbag2 directory, a .mcap or a .db3 file")
        try:
            reader = Reader(target)
            reader.open()
        except _READ_ERRORS as err:
            raise _corrupt(path, err) from None
        self._reader = reader
        try:
            self.typestore = self._typestore_for(reader)
            self.info = self._describe(reader, target, recovered)
        except BagError:
            self.close()
            raise
        except _READ_ERRORS as err:
            self.close()
            raise _corrupt(path, err) from None
        return self

    def _storage_name(self, target: Path) -> str:
        if target.is_file():
            return STORAGE_SUFFIXES[target.suffix]
        files = _storage_files(target)
        return STORAGE_SUFFIXES[files[0].suffix] if files else "unknown"

    def _describe(self, reader: Reader, target: Path, recovered: bool) -> BagInfo:
        topics = {}
        for name, topic in reader.topics.items():
            msgtype = topic.msgtype or "/".join(sorted({c.msgtype for c in topic.connections}))
            topics[name] = TopicSummary(name, msgtype, int(topic.msgcount))
        count = int(reader.message_count)
        files = [target] if target.is_file() else _storage_files(target)
        return BagInfo(
            path=self.path, storage=self._storage_name(target), topics=topics, message_count=count,
            start_ns=int(reader.start_time) if count else 0,
            end_ns=int(reader.end_time) - 1 if count else 0,  # rosbags' end is exclusive
            size_bytes=sum(p.stat().st_size for p in files), recovered=recovered)

    @staticmethod
    def _typestore_for(reader: Reader) -> Typestore:
        """The standard types plus every type the bag defines that they lack. The bag's own
        definitions come first for types outside the standard set (our msgs), so a bag
        recorded with older definitions of them still decodes."""
        store = typestore(own_types=False)
        missing_definitions = []
        for connection in reader.connections:
            if connection.msgtype in store.fielddefs:
                continue
            definition = connection.msgdef
            try:
                if definition.format == MessageDefinitionFormat.MSG and definition.data:
                    parsed = get_types_from_msg(definition.data, connection.msgtype)
                elif definition.format == MessageDefinitionFormat.IDL and definition.data:
                    parsed = get_types_from_idl(definition.data)
                else:
                    parsed = {}
                # the standard types it uses are known already (and may differ across distros)
                new = {name: fields for name, fields in parsed.items() if name not in store.fielddefs}
                used = set().union(*(referenced_types(fields) for fields in new.values())) - set(new)
                ensure_types(store, used)  # types it uses without defining them
                store.register(new)
            except (TypesysError, MessageTypeError):
                pass  # a broken definition: the topic is still listed and readable raw
            if connection.msgtype not in store.fielddefs:
                missing_definitions.append(connection.msgtype)
        if missing_definitions:
            try:
                ensure_types(store, missing_definitions)
            except MessageTypeError:
                pass  # such topics can still be listed and read raw; deserialize() says why not
        return store

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except _READ_ERRORS:
                pass

    def __enter__(self) -> BagReader:
        return self if self._reader is not None else self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------
    def require(self, needed: Mapping[str, str | Collection[str]], min_messages: int = 1) -> None:
        """See :func:`require_topics`."""
        require_topics(self.info, needed, min_messages)

    def messages(self, topics: Collection[str] | None = None, start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[BagMessage]:
        """Messages in timestamp order, optionally only of ``topics`` and within
        [start_ns, stop_ns). A damaged file raises BagError when the damage is reached."""
        if self._reader is None:
            raise BagError(f"bag {str(self.path)!r} is not open")
        if topics is not None:
            unknown = sorted(set(topics) - set(self.info.topics))
            if unknown:
                raise BagError(f"bag has no topic {', '.join(unknown)}; it has:\n{self.info.listing()}")
            connections = [c for c in self._reader.connections if c.topic in set(topics)]
            if not connections:
                return iter(())
        else:
            connections = []
        return self._iterate(connections, start_ns, stop_ns)

    def _iterate(self, connections, start_ns, stop_ns) -> Iterator[BagMessage]:
        count = 0
        try:
            for connection, timestamp, data in self._reader.messages(connections, start_ns, stop_ns):
                count += 1
                yield BagMessage(connection.topic, connection.msgtype, int(timestamp), bytes(data))
        except _READ_ERRORS as err:
            raise _corrupt(self.path, err, doing=f"read message {count + 1} of") from None

    def deserialize(self, message: BagMessage):
        """The rosbags message object of a :class:`BagMessage` (numpy arrays for numeric
        sequences; the same field names as the rclpy message)."""
        if message.msgtype not in self.typestore.fielddefs:
            raise MessageTypeError(f"bag {str(self.path)!r} has no definition of {message.msgtype} "
                                   f"(topic {message.topic}) and none is installed")
        try:
            return self.typestore.deserialize_cdr(message.data, message.msgtype)
        except (SerdeError, struct.error, ValueError, IndexError, AssertionError, UnicodeDecodeError) as err:
            raise BagError(f"a {message.msgtype} message on {message.topic} at t={message.timestamp_ns} ns "
                           f"in {str(self.path)!r} cannot be decoded: {err}") from None


def open_bag(path: str | Path) -> BagReader:
    """Open a bag for reading: ``with open_bag(path) as bag: ...``. Raises BagError."""
    return BagReader(path).open()


def describe(path: str | Path) -> BagInfo:
    """Topics (type, message count), storage, time span and size of a bag."""
    with open_bag(path) as bag:
        return bag.info


def require_topics(info: BagInfo, needed: Mapping[str, str | Collection[str]], min_messages: int = 1) -> None:
    """Fail unless ``info`` has every topic of ``needed`` with one of the accepted types
    (``{"/joint_states": "sensor_msgs/msg/JointState", "/cam": ("sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage")}``) and at least ``min_messages`` messages on it.
    The BagError names every problem and lists what the bag does have."""
    problems = []
    for topic, accepted in needed.items():
        accepted = (accepted,) if isinstance(accepted, str) else tuple(accepted)
        found = info.topics.get(topic)
        if found is None:
            problems.append(f"missing topic {topic} ({' or '.join(accepted)})")
        elif found.msgtype not in accepted:
            problems.append(f"topic {topic} has type {found.msgtype}; expected {' or '.join(accepted)}")
        elif found.count < min_messages:
            problems.append(f"topic {topic} has {found.count} messages; at least {min_messages} needed")
    if problems:
        raise BagError(f"bag {str(info.path)!r} cannot be used: " + "; ".join(problems) + f"\n{info.listing()}")
