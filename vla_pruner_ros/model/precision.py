"""Which floating-point type a policy runs in: ``dtype: auto`` and its reason.

``auto`` means the fastest dtype the hardware runs natively:

- CUDA: bfloat16;
- a CPU that reports native bfloat16 arithmetic (x86 ``avx512_bf16`` or AMX ``amx_bf16``; oneDNN then
  runs bf16 matmuls at about 4x the float32 rate): bfloat16;
- any other CPU: float32 (bf16 would be emulated there, slower than float32).

The CPU is asked, not guessed: the flags come from ``/proc/cpuinfo`` (Linux), else from PyTorch's
own cpuinfo probe (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``).

``VLA_PRUNER_AUTO_DTYPE=float32`` (or ``bfloat16``, ``float16``) pins what ``auto`` means, e.g. to make
a test session give the same numbers on every machine; an explicit dtype always wins over it.

    resolve_dtype("auto", "cpu")   # DtypeChoice(dtype=torch.bfloat16, reason="auto: the CPU reports avx512_bf16")
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
AUTO_ENV = "VLA_PRUNER_AUTO_DTYPE"
# CPU flags (as /proc/cpuinfo spells them) that mean bf16 dot products run in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str  # why: "requested", "auto: the CPU reports avx512_bf16", ...

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def _proc_cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU flags of the first processor listed in ``path``; None when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def _torch_cpu_flags() -> set[str]:
    """The same flags from PyTorch's cpuinfo probe (for systems without /proc/cpuinfo)."""
    flags = set()
    cpu = getattr(torch, "cpu", None)
    probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))
    for flag, probe in probes:
        function = getattr(cpu, probe, None)
        try:
            if function is not None and function():
                flags.add(flag)
        except RuntimeError:
            pass
    return flags


def cpu_native_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (empty: no native bf16)."""
    flags = _proc_cpuinfo_flags()
    if flags is None:
        flags = _torch_cpu_flags()
    return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags)


def _parse(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None for auto, else a floating torch.dtype."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
        return DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}: expected a floating torch.dtype or one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> DtypeChoice:
    """The dtype to run in on ``device``: ``dtype`` itself, or for "auto"/None the native choice."""
    explicit = _parse(dtype)
    if explicit is not None:
        return DtypeChoice(explicit, "requested")
    pinned = os.environ.get(AUTO_ENV, "").strip()
    if pinned:
        if pinned not in DTYPES:
            raise ValueError(f"{AUTO_ENV}={pinned!r}: expected one of {', '.join(DTYPES)}")
        return DtypeChoice(DTYPES[pinned], f"auto, pinned by {AUTO_ENV}")
    device = torch.device(device)
    if device.type == "cuda":
        return DtypeChoice(torch.bfloat16, "auto: CUDA")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: {device.type}")
    flags = cpu_native_bf16_flags()
    if flags:
        return DtypeChoice(torch.bfloat16, f"auto: the CPU reports {'+'.join(flags)}")
    return DtypeChoice(torch.float32, "auto: the CPU has no native bf16 (no avx512_bf16/amx_bf16)")
