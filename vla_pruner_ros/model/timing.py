"""Per-stage wall-clock timings of a policy step.

On CUDA, kernels run asynchronously: a stage's time is only meaningful if the device is
synchronised around it, which itself costs time. So the policy measures stages on CUDA only when
profiling is requested (``synchronize`` given) and otherwise times just the whole step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StageTimer:
    def __init__(self, enabled: bool = True, synchronize: Callable[[], None] | None = None) -> None:
        self.enabled = enabled
        self.synchronize = synchronize
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.synchronize is not None:
            self.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize is not None:
                self.synchronize()
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
