"""Errors of bag I/O. Each message says which bag or type, what was wrong and what was found."""
from __future__ import annotations


class BagError(ValueError):
    """A bag cannot be read or used: missing, not a bag, corrupt or truncated, or lacking a
    topic. The text says what was expected and what the bag has."""


class MessageTypeError(BagError):
    """A message type has no definition: not in the standard ROS 2 set, not in this package's
    ``msg/`` folder and not under any ``share/<package>/msg`` of ``AMENT_PREFIX_PATH``."""


class BagWriteError(BagError):
    """Writing a bag failed (output exists, directory not writable, disk full, ...).

    ``errno`` is the operating-system error number when there was one (e.g. ``errno.ENOSPC``).
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno
