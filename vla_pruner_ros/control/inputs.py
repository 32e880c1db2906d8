"""The latest value of each input with its stamp, and whether a step may run now.

A step runs only when every required input (both camera views, the joint state) is present
and newer than ``max_input_age``; otherwise the node holds and reports which input is missing
or stale and by how much. Stamps far in the future (a clock problem on the sender) are
treated as invalid, not as fresh.
"""
from __future__ import annotations

import threading
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


class InputBuffer:
    """Thread-safe latest-value store keyed by input name."""

    def __init__(self, required: tuple[str, ...]):
        self.required = tuple(required)
        self._latest: dict[str, Stamped] = {}
        self._lock = threading.Lock()

    def put(self, name: str, value: Any, stamp: float | None, now: float, source_stamp: Any = None) -> None:
        """Store ``value``; a zero/None stamp means the sender did not stamp it: use ``now``."""
        if not stamp:
            stamp, source_stamp = now, None
        stamp = float(stamp)
        with self._lock:
            previous = self._latest.get(name)
            # An older frame arriving late must not replace a newer one -- unless the newer one
            # carried a future stamp, which must not block recovery once the sender is fixed.
            if previous is not None and stamp < previous.stamp <= now + MAX_FUTURE_SKEW:
                return
            self._latest[name] = Stamped(value, stamp, now, source_stamp)

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
        problems = []
        for name in self.required:
            item = latest.get(name)
            if item is None:
                problems.append(f"{name}: nothing received yet")
                continue
            age = now - item.stamp
            if age < -MAX_FUTURE_SKEW:
                problems.append(f"{name}: stamp is {-age:.2f} s in the future (sender clock?)")
            elif age > max_age:
                problems.append(f"{name}: last message {age:.2f} s old > max_input_age {max_age:.2f} s")
        if problems:
            return None, "; ".join(problems)
        return {name: latest[name] for name in self.required}, ""


def joint_positions_from_msg(msg, joint_names: tuple[str, ...]) -> np.ndarray:
    """Positions of ``joint_names`` (matched by name, not order) from a ``sensor_msgs/JointState``.

    Raises ValueError naming what is wrong: a missing joint, fewer positions than names, or a
    non-finite value.
    """
    names = list(msg.name)
    positions = list(msg.position)
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


def clean_instruction(text) -> str:
    """The instruction as the policy will get it, or ValueError saying why it is refused."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"instruction is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    text = " ".join(str(text).split())
    if "\ufffd" in text:
        # rclpy decodes invalid UTF-8 with replacement characters instead of failing.
        raise ValueError("instruction is not valid UTF-8 (it holds U+FFFD replacement characters)")
    if not text:
        raise ValueError("instruction is empty; expected a task description such as 'pick up the red cube'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise ValueError(f"instruction has {len(text)} characters; expected at most {MAX_INSTRUCTION_CHARS}")
    return text
