"""The latest value of each input with its stamp, and whether a step may run now.

A step runs only when every required input (both camera views, the joint state) is present
and newer than ``max_input_age``; otherwise the node holds and reports which input is missing
or stale and by how much. Stamps far in the future (a clock problem on the sender) are
treated as invalid, not as fresh.
"""
from __future__ import annotations

import struct
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

# A stamp more than this ahead of our clock is a sender clock problem, not a fresh frame.
MAX_FUTURE_SKEW = 0.5


@dataclass
class Stamped:
    value: Any
    stamp: float  # seconds, sender's header stamp (or receive time when the header is empty)
    received: float  # seconds, our clock at reception
    source_stamp: Any = None  # the sender's stamp object, passed on unchanged (no float round trip)
    error: str | None = None  # the newest message of this input was unusable: why (value is None)


class InputBuffer:
    """Thread-safe latest-value store keyed by input name."""

    def __init__(self, required: tuple[str, ...]):
        self.required = tuple(required)
        self._latest: dict[str, Stamped] = {}
        self._notes: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def put(self, name: str, value: Any, stamp: float | None, now: float, source_stamp: Any = None,
            error: str | None = None) -> None:
        """Store ``value``; a zero/None stamp means the sender did not stamp it: use ``now``.

        With ``error`` the newest message of ``name`` was unusable (e.g. a frame that does not
        decode): no step runs on that input until a good one replaces it, and the hold says why.
        """
        if not stamp:
            stamp, source_stamp = now, None
        stamp = float(stamp)
        with self._lock:
            previous = self._latest.get(name)
            # An older frame arriving late must not replace a newer one -- unless the newer one
            # carried a future stamp, which must not block recovery once the sender is fixed.
            if previous is not None and stamp < previous.stamp <= now + MAX_FUTURE_SKEW:
                return
            self._latest[name] = Stamped(None if error else value, stamp, now, source_stamp, error)
            self._notes.pop(name, None)

    def note(self, name: str, reason: str, now: float) -> None:
        """A message on ``name``'s topic that was not for us (e.g. a joint state naming none of the
        arm's joints): not an error while good messages arrive, but the cause when none do."""
        with self._lock:
            self._notes[name] = (now, reason)

    def get(self, name: str) -> Stamped | None:
        with self._lock:
            return self._latest.get(name)

    def clear(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._latest.clear()
            else:
                self._latest.pop(name, None)

    def snapshot(self, now: float, max_age: float) -> tuple[dict[str, Stamped] | None, str]:
        """(values, "") when every required input is fresh, else (None, reason)."""
        with self._lock:
            latest = dict(self._latest)
            notes = dict(self._notes)
        problems = []
        for name in self.required:
            item = latest.get(name)
            note = f" ({notes[name][1]})" if name in notes else ""
            if item is None:
                problems.append(f"{name}: nothing received yet{note}")
                continue
            age = now - item.stamp
            if item.error:
                problems.append(item.error)
            elif age < -MAX_FUTURE_SKEW:
                problems.append(f"{name}: stamp is {-age:.2f} s in the future (sender clock?)")
            elif age > max_age:
                problems.append(f"{name}: last message {age:.2f} s old > max_input_age {max_age:.2f} s{note}")
        if problems:
            return None, "; ".join(problems)
        return {name: latest[name] for name in self.required}, ""


def joint_positions_from_msg(msg, joint_names: tuple[str, ...]) -> np.ndarray:
    """Positions of ``joint_names`` (matched by name, not order) from a ``sensor_msgs/JointState``.

    Raises ValueError naming what is wrong: an empty message, a name given twice, a missing joint,
    fewer positions than names, or a non-finite value.
    """
    names = list(msg.name)
    positions = list(msg.position)
    if not names:
        raise ValueError(f"joint state names no joints ({len(positions)} positions); expected {list(joint_names)}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"joint state names {name!r} twice (entries {seen[name]} and {i}); "
                             "which position is right is unknown")
        seen[name] = i
    if len(positions) < len(names):
        raise ValueError(f"joint state has {len(names)} names but only {len(positions)} positions")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in joint_names if name not in index]
    if missing:
        raise ValueError(f"joint state lacks {missing}; expected all of {list(joint_names)} (got {names})")
    values = np.array([positions[index[name]] for name in joint_names], dtype=np.float64)
    if not np.isfinite(values).all():
        bad = [name for name, value in zip(joint_names, values) if not np.isfinite(value)]
        raise ValueError(f"joint state has non-finite positions for {bad}")
    return values


def optional_joint_position(msg, joint_name: str) -> float | None:
    """Position of one joint if the message carries a finite value for it, else None."""
    names = list(msg.name)
    if joint_name not in names:
        return None
    i = names.index(joint_name)
    if i >= len(msg.position) or not np.isfinite(msg.position[i]):
        return None
    return float(msg.position[i])


MAX_INSTRUCTION_CHARS = 512
# Whitespace controls that only separate words: collapsed to single spaces.
_WORD_SEPARATORS = "\t\n\r"


def clean_instruction(text) -> str:
    """The instruction as the policy will get it, or ValueError saying why it is refused.

    One check for every path (parameter, topic, bag replay): bytes must be valid UTF-8; a NUL,
    any other control character (tab/newline/CR excepted: they separate words) and invisible
    format characters (zero-width, bidirectional overrides, ...) are refused, naming the code
    point and its position; runs of whitespace become one space; the result must be non-empty
    and at most MAX_INSTRUCTION_CHARS characters. Nothing is truncated or silently dropped.
    Valid text that holds U+FFFD (the replacement character) is text like any other.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"instruction is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not isinstance(text, str):
        raise ValueError(f"instruction must be text, got {type(text).__name__}")
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if char == "\0":
            raise ValueError(f"instruction holds a NUL character at position {position}")
        if (category == "Cc" and char not in _WORD_SEPARATORS) or category == "Cf":
            kind = "control" if category == "Cc" else "invisible format"
            name = unicodedata.name(char, "")
            raise ValueError(f"instruction holds the {kind} character U+{ord(char):04X}"
                             f"{f' ({name})' if name else ''} at position {position}")
    text = " ".join(text.split())
    if not text:
        raise ValueError("instruction is empty; expected a task description such as 'pick up the red cube'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise ValueError(f"instruction has {len(text)} characters; expected at most {MAX_INSTRUCTION_CHARS}")
    return text


# CDR encapsulation identifiers (first two bytes of a serialized message) for plain types.
_CDR_LITTLE_ENDIAN = {b"\x00\x01": True, b"\x00\x07": True, b"\x00\x00": False, b"\x00\x06": False}


def string_message_bytes(serialized: bytes) -> bytes | None:
    """The ``data`` bytes of a serialized ``std_msgs/String``, exactly as sent, or None when the
    buffer is not a plain CDR string. rclpy's own deserialisation stops at the first NUL and
    replaces invalid UTF-8 with U+FFFD; these bytes let ``clean_instruction`` see what was sent."""
    serialized = bytes(serialized)
    little = _CDR_LITTLE_ENDIAN.get(serialized[:2])
    if little is None or len(serialized) < 8:
        return None
    (length,) = struct.unpack("<I" if little else ">I", serialized[4:8])
    if length < 1 or 8 + length > len(serialized) or serialized[8 + length - 1] != 0:
        return None
    return serialized[8:8 + length - 1]
