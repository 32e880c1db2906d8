"""Message types for bag I/O: the standard ROS 2 messages plus this package's own.

A bag stores, for every topic, the type's full text definition and its RIHS01 hash; readers
(``ros2 bag info/play``, rosbags, Foxglove) need both. rosbags ships the standard messages of
each ROS distribution; this module adds ``vla_pruner_ros/msg/*`` (and any other package's
messages) from the ``.msg`` files that colcon installs under ``share/<package>/msg`` -- or,
in a source checkout, from this repository's ``msg/`` folder -- so no ROS build is needed to
read or write our bags.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as _rosbags_typestore
from rosbags.typesys.base import Nodetype
from rosbags.typesys.store import Typestore

from .errors import MessageTypeError

PACKAGE = "vla_pruner_ros"
# The ROS wheels this project runs on are Kilted; its standard definitions (and hashes) match.
DISTRO_STORE = Stores.ROS2_KILTED
# Where a source checkout keeps the package's own definitions.
SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / "msg"


def normalize_type(msgtype: str) -> str:
    """``pkg/msg/Name`` from ``pkg/msg/Name`` or ``pkg/Name``."""
    parts = str(msgtype).strip().split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/msg/{parts[1]}"
    if len(parts) == 3 and all(parts) and parts[1] == "msg":
        return "/".join(parts)
    raise MessageTypeError(f"message type {msgtype!r} is not of the form package/msg/Name")


def msg_search_dirs(package: str) -> list[Path]:
    """Folders that may hold ``<Name>.msg`` of ``package``: each ``share/<package>/msg`` of
    AMENT_PREFIX_PATH, then (for this package) the source checkout's ``msg/``."""
    dirs = [Path(prefix) / "share" / package / "msg"
            for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if prefix]
    if package == PACKAGE:
        dirs.append(SOURCE_MSG_DIR)
    return dirs


def find_msg_file(msgtype: str) -> Path | None:
    package, _, name = normalize_type(msgtype).split("/")
    for folder in msg_search_dirs(package):
        candidate = folder / f"{name}.msg"
        if candidate.is_file():
            return candidate
    return None


def referenced_types(fielddef) -> set[str]:
    """Names of the message types that the fields of one parsed definition refer to."""
    names = set()
    for _, (kind, detail) in fielddef[1]:
        if kind == Nodetype.NAME:
            names.add(detail)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
            names.add(detail[0][1])
    return names


def ensure_types(store: Typestore, msgtypes: Iterable[str]) -> None:
    """Register every type of ``msgtypes`` (and the types they use) that ``store`` lacks, from
    the ``.msg`` files found by :func:`find_msg_file`. Raises MessageTypeError naming the
    type and the folders searched when a definition cannot be found."""
    found: dict = {}
    pending = [normalize_type(t) for t in msgtypes]
    while pending:
        msgtype = pending.pop()
        if msgtype in store.fielddefs or msgtype in found:
            continue
        path = find_msg_file(msgtype)
        if path is None:
            searched = ", ".join(str(d) for d in msg_search_dirs(msgtype.split("/")[0])) or "(none)"
            raise MessageTypeError(
                f"no definition of message type {msgtype!r}: it is not a standard ROS 2 message "
                f"and no {msgtype.split('/')[-1]}.msg was found in: {searched}"
            )
        parsed = get_types_from_msg(path.read_text(encoding="utf-8"), msgtype)
        found.update(parsed)
        for fielddef in parsed.values():
            pending.extend(referenced_types(fielddef))
    if found:
        store.register(found)


def own_message_types() -> list[str]:
    """This package's message types, from the first folder that has its ``.msg`` files."""
    for folder in msg_search_dirs(PACKAGE):
        names = sorted(p.stem for p in folder.glob("*.msg"))
        if names:
            return [f"{PACKAGE}/msg/{name}" for name in names]
    return []


def typestore(*, own_types: bool = True) -> Typestore:
    """A fresh rosbags type store with the standard ROS 2 (Kilted) messages and, unless
    ``own_types`` is false, this package's messages registered."""
    store = _rosbags_typestore(DISTRO_STORE)
    if own_types:
        ensure_types(store, own_message_types())
    return store


def message_definition(store: Typestore, msgtype: str) -> tuple[str, str]:
    """``(definition text, RIHS01 hash)`` of ``msgtype`` as ``ros2 bag record`` stores them,
    registering the type first if it is missing."""
    msgtype = normalize_type(msgtype)
    ensure_types(store, [msgtype])
    text, _ = store.generate_msgdef(msgtype, ros_version=2)
    return text, store.hash_rihs01(msgtype)


def serialize(msg, msgtype: str | None = None, store: Typestore | None = None) -> bytes:
    """CDR bytes of a message: a rosbags message object (its type is known) or an rclpy
    message (serialised with rclpy, which is imported only then)."""
    if hasattr(type(msg), "_TYPE_SUPPORT") or hasattr(type(msg), "get_fields_and_field_types"):
        from rclpy.serialization import serialize_message

        return bytes(serialize_message(msg))
    msgtype = normalize_type(msgtype or getattr(msg, "__msgtype__", ""))
    store = store or typestore()
    ensure_types(store, [msgtype])
    return bytes(store.serialize_cdr(msg, msgtype))


def deserialize(data: bytes, msgtype: str, store: Typestore | None = None):
    """A rosbags message object (plain dataclass, numpy arrays for numeric sequences) from
    CDR bytes. Needs no ROS installation."""
    msgtype = normalize_type(msgtype)
    store = store or typestore()
    ensure_types(store, [msgtype])
    return store.deserialize_cdr(data, msgtype)


def ros_message_class(msgtype: str):
    """The rclpy message class of ``pkg/msg/Name`` (imports ``pkg.msg``). Raises
    MessageTypeError when the package's Python messages are not installed."""
    import importlib

    package, _, name = normalize_type(msgtype).split("/")
    try:
        module = importlib.import_module(f"{package}.msg")
        return getattr(module, name)
    except (ImportError, AttributeError) as err:
        raise MessageTypeError(
            f"message type {msgtype!r} is not available to rclpy here ({err}); "
            f"build or source the package that defines it"
        ) from None


def deserialize_ros(data: bytes, msgtype: str):
    """The rclpy message (the very class a node's subscription gets) from CDR bytes."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(data, ros_message_class(msgtype))
