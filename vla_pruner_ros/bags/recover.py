"""Recover a bag whose writer was killed before it could close (``vla-pruner bag recover DIR``).

A recorder that is killed (SIGKILL, power loss, OOM killer) leaves its bag directory without
``metadata.yaml``; an MCAP file also lacks its summary and footer, so no reader opens it. What
the file does hold is every record written before the kill: MCAP chunks (the writer closes one
at least every second) and sqlite3 commits (at least every second). This module reads those
complete records -- an MCAP file record by record up to the first incomplete one, a sqlite3
database as sqlite itself recovers it (rolling back an unfinished transaction) -- and writes
them as a new, closed bag of the same storage in place of the damaged file, which is kept next
to it as ``<name>.damaged`` (like ``ros2 bag reindex``, but also repairing the MCAP file).
"""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos

from .errors import BagError, MessageTypeError
from .types import message_definition, normalize_type, typestore
from .writer import BAG_VERSION, RESERVE_NAME

MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_FOOTER = 0x03, 0x04, 0x05, 0x06, 0x02


@dataclass
class RecoveredTopic:
    topic: str
    msgtype: str
    msgdef: str = ""  # the definition text stored in the file ("" if none)
    type_hash: str = ""
    offered_qos: str = ""  # the offered_qos_profiles text stored in the file
    messages: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class RecoveryReport:
    path: Path
    storage: str
    messages: int
    topics: dict[str, int]
    damaged_file: Path | None  # the original storage file, kept
    note: str = ""  # how the file ended ("incomplete record at byte N", ...)

    def summary(self) -> str:
        topics = ", ".join(f"{t} {n}" for t, n in self.topics.items()) or "no topics"
        kept = f"; the damaged file is kept as {self.damaged_file.name}" if self.damaged_file else ""
        return (f"recovered {self.messages} messages on {len(self.topics)} topics ({topics}) into "
                f"{str(self.path)!r} ({self.storage}){kept}" + (f"; {self.note}" if self.note else ""))


def _string(buffer: io.BytesIO) -> str:
    (length,) = struct.unpack("<I", buffer.read(4))
    data = buffer.read(length)
    if len(data) != length:
        raise ValueError("string runs past its record")
    return data.decode()


def _bytes_field(buffer: io.BytesIO) -> bytes:
    (length,) = struct.unpack("<I", buffer.read(4))
    return buffer.read(length)


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    raise ValueError(f"unknown chunk compression {compression!r}")


def read_mcap_records(path: Path) -> tuple[list[RecoveredTopic], str]:
    """Topics and messages of every complete record of an MCAP file, and a note on how it ended."""
    data = path.read_bytes()
    if not data.startswith(MCAP_MAGIC):
        raise BagError(f"{path}: not an MCAP file (no MCAP magic at the start)")
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, RecoveredTopic] = {}
    note = ""

    def parse(blob: bytes, top_level: bool) -> None:
        nonlocal note
        offset = 0 if not top_level else len(MCAP_MAGIC)
        while offset < len(blob):
            if offset + 9 > len(blob):
                note = f"incomplete record at byte {offset} of {len(blob)}"
                return
            op, length = blob[offset], struct.unpack_from("<Q", blob, offset + 1)[0]
            start, end = offset + 9, offset + 9 + length
            if end > len(blob):
                note = f"incomplete record at byte {offset} of {len(blob)} (the kill came while it was written)"
                return
            record = io.BytesIO(blob[start:end])
            if op == _OP_SCHEMA:
                (schema_id,) = struct.unpack("<H", record.read(2))
                name, _encoding, text = _string(record), _string(record), _bytes_field(record)
                schemas[schema_id] = (name, text.decode(errors="replace"))
            elif op == _OP_CHANNEL:
                channel_id, schema_id = struct.unpack("<HH", record.read(4))
                topic, _encoding = _string(record), _string(record)
                metadata, qos = io.BytesIO(_bytes_field(record)), ""
                while metadata.tell() < len(metadata.getbuffer()):
                    key, value = _string(metadata), _string(metadata)
                    if key == "offered_qos_profiles":
                        qos = value
                name, text = schemas.get(schema_id, ("", ""))
                channels.setdefault(channel_id, RecoveredTopic(topic, name, text, "", qos))
            elif op == _OP_MESSAGE:
                channel_id, _sequence, log_time, _publish_time = struct.unpack("<HIQQ", record.read(22))
                if channel_id in channels:
                    channels[channel_id].messages.append((log_time, record.read()))
            elif op == _OP_CHUNK and top_level:
                _start_time, _end_time, size, _crc = struct.unpack("<QQQI", record.read(28))
                compression = _string(record)
                (compressed_size,) = struct.unpack("<Q", record.read(8))
                parse(_decompress(record.read(compressed_size), compression, size), top_level=False)
            elif op == _OP_FOOTER:
                return
            offset = end

    try:
        parse(data, top_level=True)
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        raise BagError(f"{path}: a complete record cannot be decoded ({error}); not recoverable") from None
    return list(channels.values()), note


def read_sqlite_records(path: Path) -> tuple[list[RecoveredTopic], str]:
    """Topics and messages of a rosbag2 sqlite3 database (as of its last commit)."""
    try:
        connection = sqlite3.connect(path)  # rolls back a transaction the kill interrupted
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"topics", "messages"} <= tables:
                raise BagError(f"{path}: not a rosbag2 database (no topics/messages tables)")
            columns = {row[1] for row in connection.execute("PRAGMA table_info(topics)")}
            hash_column = "type_description_hash" if "type_description_hash" in columns else "''"
            topics = {row[0]: RecoveredTopic(row[1], row[2], "", row[4], row[3]) for row in connection.execute(
                f"SELECT id, name, type, offered_qos_profiles, {hash_column} FROM topics")}
            if "message_definitions" in tables:
                definitions = dict(connection.execute(
                    "SELECT topic_type, encoded_message_definition FROM message_definitions"))
                for topic in topics.values():
                    topic.msgdef = definitions.get(topic.msgtype, "")
            for topic_id, timestamp, data in connection.execute(
                    "SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                if topic_id in topics:
                    topics[topic_id].messages.append((int(timestamp), bytes(data)))
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise BagError(f"{path}: the database cannot be read ({error}); not recoverable") from None
    return list(topics.values()), ""


def _storage_file(path: Path) -> tuple[Path, str]:
    if not path.is_dir():
        raise BagError(f"{str(path)!r} is not a bag directory")
    files = [p for p in path.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")]
    if len(files) != 1:
        found = ", ".join(sorted(p.name for p in files)) or "none"
        raise BagError(f"{str(path)!r}: expected one .mcap or .db3 file, found {found}")
    return files[0], "mcap" if files[0].suffix == ".mcap" else "sqlite3"


def recover_bag(path: str | os.PathLike, force: bool = False) -> RecoveryReport:
    """Rebuild a readable bag in ``path`` from the complete records of its storage file.

    Refuses a bag that already has ``metadata.yaml`` (it was closed) unless ``force``."""
    path = Path(path)
    storage_file, storage = _storage_file(path)
    if (path / "metadata.yaml").exists() and not force:
        raise BagError(f"{str(path)!r} has a metadata.yaml: it was closed and needs no recovery "
                       "(--force rebuilds it anyway)")
    topics, note = (read_mcap_records if storage == "mcap" else read_sqlite_records)(storage_file)
    store = typestore()
    staging = path / ".recovering"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    target = staging / storage_file.stem  # rosbags names the file after its directory
    try:
        writer = Writer(target, version=BAG_VERSION,
                        storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        writer.open()
        counts: dict[str, int] = {}
        merged = []
        for topic in topics:
            msgtype = normalize_type(topic.msgtype)
            try:
                msgdef, type_hash = message_definition(store, msgtype)
            except MessageTypeError:
                if not topic.msgdef or not topic.type_hash:
                    raise BagError(f"{str(path)!r}: topic {topic.topic} has type {msgtype}, whose definition "
                                   "is neither in the file nor known here") from None
                msgdef, type_hash = topic.msgdef, topic.type_hash
            qos = parse_qos(topic.offered_qos) if topic.offered_qos else []
            connection = writer.add_connection(topic.topic, msgtype, msgdef=msgdef, rihs01=type_hash,
                                               offered_qos_profiles=qos)
            counts[topic.topic] = len(topic.messages)
            merged += [(stamp, index, connection, data) for index, (stamp, data) in enumerate(topic.messages)]
        for stamp, _, connection, data in sorted(merged, key=lambda m: (m[0], m[1])):
            writer.write(connection, stamp, data)
        writer.close()
        damaged = storage_file.with_name(storage_file.name + ".damaged")
        os.replace(storage_file, damaged)
        os.replace(target / storage_file.name, storage_file)
        os.replace(target / "metadata.yaml", path / "metadata.yaml")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    journal = storage_file.with_name(storage_file.name + "-journal")
    journal.unlink(missing_ok=True)
    (path / RESERVE_NAME).unlink(missing_ok=True)  # the recorder's disk reserve
    return RecoveryReport(path, storage, sum(counts.values()), counts, damaged, note)
