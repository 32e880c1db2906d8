"""``JsonlSink``: finished units as JSON lines, read back on start so a sweep resumes.

The first line names the run (``fingerprint``: what every unit's result depends on, e.g. the
checkpoint and the protocol settings); a file written by a different run is refused rather than
mixed. Each following line is ``{"key": ..., "result": ...}``, appended and flushed as the unit
finishes; a line cut short by an interruption is ignored (that unit simply runs again). numpy
arrays and scalars in results are stored exactly (dtype, shape and values) and come back as numpy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "vla_pruner_ros.units/1"
_ARRAY = "__ndarray__"


def encode(value: Any) -> Any:
    """JSON-able form of a result (dicts, lists, tuples, numpy arrays and scalars, plain values)."""
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value and set(value) == {_ARRAY, "shape", "data"}:
            return np.asarray(value["data"], dtype=np.dtype(value[_ARRAY])).reshape(value["shape"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old -> new`` for every key whose value differs (absent counts as None), sorted."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)


class JsonlSink:
    """Append-only JSONL of finished units (see the module doc)."""

    def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(encode(dict(fingerprint or {}))))  # as it reads back
        self.skipped_lines = 0
        self._results: dict[str, Any] = {}
        if self.path.is_file() and self.path.stat().st_size:
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{self.path}: not a unit results file of vla_pruner_ros; use another output folder")
        if header.get("fingerprint") != self.fingerprint:
            details = describe_changes(header.get("fingerprint") or {}, self.fingerprint)
            raise ValueError(f"{self.path} holds results of a different run ({details}); use another output "
                             "folder or delete that file")
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, result = record["key"], record["result"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.skipped_lines += 1  # cut short by an interruption: that unit runs again
                continue
            self._results[str(key)] = decode(result)
        if not text.endswith("\n"):
            with open(self.path, "a", encoding="utf-8") as f:  # the next line must start on its own
                f.write("\n")

    def results(self) -> dict[str, Any]:
        return dict(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, key: str) -> bool:
        return key in self._results

    def add(self, key: str, result: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or not self.path.stat().st_size
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"format": FORMAT, "fingerprint": self.fingerprint}) + "\n")
            f.write(json.dumps({"key": key, "result": encode(result)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._results[key] = result
