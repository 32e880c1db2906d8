"""dtype "auto": bf16 exactly when the CPU reports native bf16 (the probe mocked), and what bf16 costs in
accuracy on the tiny checkpoint."""
import numpy as np
import pytest
import torch

from vla_pruner_ros.benchmarking import make_observations
from vla_pruner_ros.model import load_policy, precision
from vla_pruner_ros.model.precision import AUTO_ENV, cpu_native_bf16_flags, resolve_dtype

SKYLAKE_FLAGS = "fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the probe at a fake /proc/cpuinfo with the given flags line; unpin "auto"."""
    monkeypatch.delenv(AUTO_ENV, raising=False)
    original = precision._proc_cpuinfo_flags

    def write(flags: str | None):
        path = tmp_path / "cpuinfo"
        if flags is None:
            path = tmp_path / "missing"
        else:
            path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
                            f"processor\t: 1\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "_proc_cpuinfo_flags", lambda: original(str(path)))
    return write


@pytest.mark.parametrize("flags, expected", [
    (SKYLAKE_FLAGS, torch.float32),  # AVX-512 without bf16: bf16 would be emulated
    ("sse sse2 avx avx2 fma", torch.float32),
    (SKYLAKE_FLAGS + " avx512_bf16", torch.bfloat16),  # Zen 4, Cooper Lake
    (SKYLAKE_FLAGS + " amx_tile amx_bf16 amx_int8", torch.bfloat16),  # Sapphire Rapids
    ("fp asimd evtstrm aes", torch.float32),  # an ARM CPU ("Features" elsewhere, here "flags")
])
def test_auto_is_bf16_exactly_when_the_cpu_reports_native_bf16(cpuinfo, flags, expected):
    cpuinfo(flags)
    choice = resolve_dtype("auto", "cpu")
    assert choice.dtype == expected
    assert resolve_dtype(None, "cpu").dtype == expected
    if expected == torch.bfloat16:
        assert "avx512_bf16" in choice.reason or "amx_bf16" in choice.reason
    else:
        assert "no native bf16" in choice.reason


def test_a_flag_with_a_similar_name_is_not_native_bf16(cpuinfo):
    cpuinfo(SKYLAKE_FLAGS + " avx512_bf16x avx_vnni")  # substrings do not count
    assert resolve_dtype("auto", "cpu").dtype == torch.float32


def test_without_proc_cpuinfo_the_torch_probe_decides(cpuinfo, monkeypatch):
    cpuinfo(None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_native_bf16_flags() == ("avx512_bf16",)
    assert resolve_dtype("auto", "cpu").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolve_dtype("auto", "cpu").dtype == torch.float32


def test_cuda_explicit_dtypes_and_the_pin(cpuinfo, monkeypatch):
    cpuinfo(SKYLAKE_FLAGS)
    assert resolve_dtype("auto", "cuda").dtype == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == precision.DtypeChoice(torch.float32, "requested")
    assert resolve_dtype(torch.bfloat16, "cpu").dtype == torch.bfloat16  # explicit wins over the probe
    assert resolve_dtype("torch.float16", "cpu").dtype == torch.float16
    monkeypatch.setenv(AUTO_ENV, "bfloat16")
    assert resolve_dtype("auto", "cpu").dtype == torch.bfloat16
    assert resolve_dtype("float32", "cpu").dtype == torch.float32  # the pin only changes "auto"
    monkeypatch.setenv(AUTO_ENV, "fp8")
    with pytest.raises(ValueError, match=AUTO_ENV):
        resolve_dtype("auto", "cpu")
    for bad in ("int8", torch.int64, 3):
        with pytest.raises(ValueError, match="dtype="):
            resolve_dtype(bad, "cpu")


def test_load_policy_resolves_auto_and_says_so(cpuinfo, tiny_checkpoint, capsys):
    cpuinfo(SKYLAKE_FLAGS + " avx512_bf16")
    policy = load_policy(tiny_checkpoint)
    assert policy.dtype == torch.bfloat16
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    assert "runs in bfloat16 (auto: the CPU reports avx512_bf16) on cpu" in capsys.readouterr().err
    cpuinfo(SKYLAKE_FLAGS)
    policy = load_policy(tiny_checkpoint, dtype="auto")
    assert policy.dtype == torch.float32 and next(policy.model.parameters()).dtype == torch.float32
    assert "runs in float32 (auto: the CPU has no native bf16" in capsys.readouterr().err


# Tolerance of bf16 against float32 on the tiny checkpoint (random weights, normalised actions of
# magnitude up to ~1.7): measured max |diff| 0.026-0.048 per step over 8 observations.
BF16_ACTION_TOLERANCE = 0.1


def test_bf16_actions_match_float32_within_tolerance(tiny_checkpoint):
    runs = {name: load_policy(tiny_checkpoint, dtype=name, announce=False) for name in ("float32", "bfloat16")}
    observations = make_observations(runs["float32"], 3, seed=1)
    for obs in observations:
        f32, bf16 = (runs[name].predict(obs.images, obs.proprio, obs.instruction) for name in runs)
        difference = np.abs(f32.normalized_actions - bf16.normalized_actions)
        assert difference.max() <= BF16_ACTION_TOLERANCE
        assert difference.max() > 0  # it really ran in bf16
        assert np.corrcoef(f32.normalized_actions.ravel(), bf16.normalized_actions.ravel())[0, 1] > 0.99
        assert np.all(np.isfinite(bf16.actions))
