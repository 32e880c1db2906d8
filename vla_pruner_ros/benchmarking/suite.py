"""The benchmark: ms per action chunk and FLOPs of every pruning configuration on one model.

    result = run_benchmark(BenchSettings(preset="scaled", steps=20, warmup=5))

One model, one set of seeded observations, one process. Each configuration (method x keep ratio,
plus vanilla) is a ``Policy.fork`` of the same policy: the weights are shared, the pruner state
(VLA-Pruner's action-attention history) is the configuration's own. Phases:

1. warm-up, per configuration: the pruner's own warm-up (history methods run their first
   ``window`` steps unpruned), then ``warmup`` more steps, so every timed step is a pruned one;
2. FLOPs: one step of each configuration under the FLOP counter (``flops.count_flops``);
3. capture cost: up to 3 steps of each configuration under ``torch.profiler`` (optional), read
   off the model's score-capture range (the median step);
4. timing: ``steps`` repetitions, configurations interleaved round-robin with a rotating start
   (``timing.run_interleaved``); each sample is the wall-clock time of a whole ``predict`` (what a
   user waits for), with device synchronisation around it on CUDA.

Derived numbers (per configuration, medians): speed-up = vanilla ms / ms; FLOPs-limit speed-up =
vanilla FLOPs / FLOPs; efficiency = speed-up / limit; the same three for the LLM stage alone
(layers + score capture + selection, the part Eq. 10-13 model); selection overhead (the policy's
``select`` stage) in ms and % of the step; ms relative to FastV at the same keep ratio.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..model.modeling_llama import SCORE_CAPTURE_EVENT
from ..model.policy import Policy, load_policy
from ..pruning import METHODS, PrunerConfig
from ..pruning.variants import variant_config
from .flops import count_flops, llama_decoder_flops, paper_llm_flops
from .peak import measure_gemm_peak, model_gemm_shapes
from .models import INSTRUCTION, make_observations, random_policy
from .timing import run_interleaved, summarize

SCHEMA = "vla-pruner-bench/1"
VANILLA = "none"
DEFAULT_METHODS = ("none", "fastv", "vla_pruner", "divprune")
DEFAULT_KEEP_RATIOS = (0.5, 0.25, 0.125)
TARGETS = {"efficiency_min": 0.90, "ms_vs_fastv_max": 1.02, "select_pct_max": 2.0}
# The vanilla step's achieved FLOP/s as a fraction of the measured GEMM peak of its dtype (issue 16).
PEAK_FRACTION_TARGETS = {"bfloat16": 0.70, "float32": 0.80}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLM_STAGES = ("llm_prefix", "select", "llm_suffix")


@dataclass(frozen=True)
class BenchSettings:
    preset: str = "scaled"
    methods: tuple[str, ...] = DEFAULT_METHODS
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP_RATIOS
    steps: int = 20  # timed repetitions (each runs every configuration once)
    warmup: int = 5  # untimed steps per configuration after the pruner's own warm-up
    device: str = "cpu"
    dtype: str | None = None  # None or "auto": bf16 on CUDA / a CPU with native bf16, else float32
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    seed: int = 0
    observations: int = 4  # distinct seeded observations, cycled
    checkpoint: str | None = None  # a checkpoint directory instead of the preset's random weights
    profile_capture: bool = True  # one profiled step per configuration for the score-capture ms
    peak_probe: bool = True  # measure the GEMM peak of the dtype at the model's shapes (peak.py)
    peak_seconds: float = 0.3  # probe time per GEMM shape

    def __post_init__(self) -> None:
        for name in ("steps", "warmup", "observations", "seed"):
            value, low = getattr(self, name), 0 if name in ("warmup", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"BenchSettings.{name}={value!r}: expected an int >= {low}")
        if not self.methods:
            raise ValueError("BenchSettings.methods is empty: expected at least one of " + ", ".join(METHODS))
        unknown = [m for m in self.methods if m.split(":")[0] not in METHODS]  # variants: pruning/variants.py
        if unknown:
            raise ValueError(f"BenchSettings.methods: unknown {unknown}; expected names from {METHODS}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"BenchSettings.methods={self.methods}: names repeat")
        bad = [r for r in self.keep_ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
        if not self.keep_ratios or bad:
            raise ValueError(f"BenchSettings.keep_ratios={self.keep_ratios}: expected one or more ratios in (0, 1)")
        if len(set(self.keep_ratios)) != len(self.keep_ratios):
            raise ValueError(f"BenchSettings.keep_ratios={self.keep_ratios}: ratios repeat")
        if not (isinstance(self.peak_seconds, (int, float)) and not isinstance(self.peak_seconds, bool)
                and self.peak_seconds > 0):
            raise ValueError(f"BenchSettings.peak_seconds={self.peak_seconds!r}: expected a number > 0")
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", None)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"BenchSettings.dtype={self.dtype!r}: expected one of {sorted(DTYPES)} or None")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"BenchSettings.threads={self.threads!r}: expected an int >= 1 or None")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"BenchSettings.device={self.device!r}: CUDA is not available on this machine")


@dataclass
class Configuration:
    name: str  # "none" or "method@keep"
    method: str
    keep_ratio: float | None  # None for vanilla
    policy: Policy
    pruner_config: PrunerConfig | None = None
    steps_run: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def config_name(method: str, keep_ratio: float | None) -> str:
    return VANILLA if keep_ratio is None else f"{method}@{keep_ratio:g}"


# ------------------------------------------------------------------------------------ running
def build_policy(settings: BenchSettings) -> Policy:
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype] if settings.dtype else None  # None: auto (model.precision)
    if settings.checkpoint is not None:
        return load_policy(settings.checkpoint, device=device, dtype=dtype, announce=False)
    return random_policy(settings.preset, device=device, dtype=dtype, seed=settings.seed)


def make_configurations(base: Policy, settings: BenchSettings) -> list[Configuration]:
    """Vanilla first (always: it is the reference), then every method x keep ratio."""
    configurations = [Configuration(VANILLA, VANILLA, None, base.fork(None), None)]
    for method in settings.methods:
        if method == VANILLA:
            continue
        for keep in settings.keep_ratios:
            pruner_config = variant_config(method, float(keep))
            configurations.append(Configuration(config_name(method, keep), method, float(keep),
                                                base.fork(pruner_config), pruner_config))
    return configurations


def run_benchmark(settings: BenchSettings, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every phase and return the report (a JSON-ready dict, see ``report.py`` for printing)."""
    from tqdm import tqdm

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    load_before = _load_average()

    log(f"building {settings.checkpoint or settings.preset} on {device} ...")
    base = build_policy(settings)
    log(f"dtype {base.dtype_choice.describe()}")
    observations = make_observations(base, settings.observations, seed=settings.seed)
    configurations = make_configurations(base, settings)

    def step(config: Configuration, index: int | None = None):
        """One predict on observation ``index`` (default: the configuration's next one)."""
        obs = observations[(config.steps_run if index is None else index) % len(observations)]
        config.steps_run += 1
        return config.policy.predict(obs.images, obs.proprio, obs.instruction)

    # 1. warm-up
    for config in tqdm(configurations, desc="warm-up", unit="config", disable=not progress, file=sys.stderr):
        _warm_up(config, step, settings.warmup)

    # 2. FLOPs, 3. capture cost (untimed; each advances the pruner by one step like any other)
    for config in configurations:
        flops, output = count_flops(config.policy.model, lambda: step(config))
        config.extra["flops"] = flops
        config.extra["flops_output"] = output
    if settings.profile_capture:
        for config in configurations:
            config.extra["score_capture_ms"] = _profiled_capture_ms(lambda: step(config), device,
                                                                    steps=max(1, min(3, settings.steps // 2)))

    # 3b. the GEMM peak of this dtype at the model's shapes, right before the timing
    peak = None
    if settings.peak_probe:
        vanilla_output = configurations[0].extra["flops_output"]
        peak = measure_gemm_peak(model_gemm_shapes(base, rows=vanilla_output.seq_len_before), base.dtype, device,
                                 seconds_per_shape=settings.peak_seconds)
        log(f"GEMM peak ({peak.dtype}, {peak.threads} threads): {peak.gflops:.1f} GFLOP/s at {peak.best}")

    # 4. interleaved timing
    # repetition r shows every configuration the same observation
    calls = {c.name: (lambda repetition, c=c: step(c, repetition)) for c in configurations}
    bar = tqdm(total=settings.steps * len(calls), desc="timing", unit="step", disable=not progress, file=sys.stderr)
    samples = run_interleaved(calls, settings.steps, synchronize=synchronize,
                              on_sample=lambda name, sample: bar.update(1))
    bar.close()

    rows = [_row(config, samples[config.name], base) for config in configurations]
    _add_relative_numbers(rows, peak.gflops if peak is not None else None)
    return {
        "schema": SCHEMA,
        "settings": {**asdict(settings), "methods": list(settings.methods),
                     "keep_ratios": list(settings.keep_ratios), "instruction": INSTRUCTION},
        "machine": machine_description(device, base.dtype, load_before, _load_average(),
                                       base.dtype_choice.reason),
        "model": model_description(base, settings, configurations[0].extra["flops_output"]),
        "gemm_peak": peak.as_dict() if peak is not None else None,
        "rows": rows,
        "targets": evaluate_targets(rows, str(base.dtype).removeprefix("torch.")),
    }


def _warm_up(config: Configuration, step, extra_steps: int) -> None:
    """Step past the pruner's own warm-up (its history window), then ``extra_steps`` more."""
    limit = (config.pruner_config.window if config.pruner_config is not None else 0) + 1
    for _ in range(limit):
        output = step(config)
        if not output.warmup:
            break
    for _ in range(extra_steps):
        output = step(config)
    if output.warmup:
        raise RuntimeError(f"{config.name}: the pruner is still warming up after {limit} steps")
    if config.keep_ratio is not None and not output.pruned:
        raise RuntimeError(f"{config.name}: the step after warm-up did not prune (kept all "
                           f"{output.num_visual_tokens} visual tokens)")


def _profiled_capture_ms(run_step: Callable[[], Any], device: torch.device, steps: int = 3) -> float:
    """Median over ``steps`` profiled steps of the ms spent in the model's score-capture range
    (CPU time; on CUDA the device time of the range)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    per_step = []
    for _ in range(steps):
        with _stderr_silenced(), profile(activities=activities) as profiler:
            run_step()
        total_us = 0.0
        for event in profiler.key_averages():
            if event.key == SCORE_CAPTURE_EVENT:
                device_us = getattr(event, "device_time_total", 0.0)
                total_us += device_us if device.type == "cuda" and device_us else event.cpu_time_total
        per_step.append(total_us / 1e3)
    return _median(per_step)


@contextlib.contextmanager
def _stderr_silenced():
    """The profiler's native library logs every start/stop on file descriptor 2; mute it meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ------------------------------------------------------------------------------------ numbers
def _median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else 0.0


def _row(config: Configuration, samples, base: Policy) -> dict[str, Any]:
    outputs = [s.result for s in samples]
    last = outputs[-1]
    spread = summarize([s.ms for s in samples])
    has_stages = all(outputs[0].timings.get(stage) is not None for stage in LLM_STAGES)
    stages = {stage: _median(o.timings[stage] for o in outputs) for stage in outputs[0].timings} if has_stages else {}
    llm_ms = _median(sum(o.timings[s] for s in LLM_STAGES) for o in outputs) if has_stages else None
    pruner_select_ms = _median(o.pruner.get("select_ms", 0.0) for o in outputs)
    # The policy's "select" stage (score averaging, the pruner, dropping rows); on CUDA without
    # stage timings only the pruner's own selection time is known.
    select_ms = stages.get("select", pruner_select_ms) if config.keep_ratio is not None else 0.0

    flops = config.extra["flops"]
    flops_output = config.extra["flops_output"]
    text = base.config.text_config
    rows_per_layer = _rows_per_layer(flops_output, base.num_layers)
    analytic = paper_llm_flops(text.num_hidden_layers, text.hidden_size, text.intermediate_size,
                               flops_output.seq_len_before,
                               flops_output.seq_len_after if flops_output.pruned else None,
                               flops_output.prune_layer if flops_output.pruned else None)
    # pool sizes of the step whose FLOPs are reported (they vary a little from step to step)
    pools = {key: flops_output.pruner.get(key) for key in ("pool_vl", "pool_act", "pool_dual")} \
        if flops_output.pruner else {}
    return {
        "name": config.name,
        "method": config.method,
        "keep_ratio": config.keep_ratio,
        "pruned": bool(last.pruned),
        "timed_steps_pruned": sum(bool(o.pruned) for o in outputs),  # == steps for every pruning row
        "kept": int(len(last.kept_indices)),
        "num_visual": int(last.num_visual_tokens),
        "seq_len_before": int(last.seq_len_before),
        "seq_len_after": int(last.seq_len_after),
        "prune_layer": last.prune_layer,
        "ms": spread.as_dict(),
        "samples_ms": [round(s.ms, 4) for s in samples],
        "stages_ms": stages,
        "llm_ms": llm_ms,
        "select_ms": select_ms,
        "pruner_select_ms": pruner_select_ms,
        "select_pct": 100.0 * select_ms / spread.median,
        "score_capture_ms": config.extra.get("score_capture_ms"),
        "pools": pools,
        "flops": flops.as_dict(),
        "flops_decoder_layers_exact": llama_decoder_flops(rows_per_layer, text),
        "analytic_llm_flops": analytic,  # paper Eq. 10-13 (multiply-adds, two-matrix FFN)
    }


def _rows_per_layer(output, num_layers: int) -> list[int]:
    if not output.pruned:
        return [output.seq_len_before] * num_layers
    layer = output.prune_layer
    return [output.seq_len_before] * layer + [output.seq_len_after] * (num_layers - layer)


def _add_relative_numbers(rows: list[dict[str, Any]], peak_gflops: float | None = None) -> None:
    """Speed-ups, FLOPs ratios, limits and efficiencies against vanilla; ms against FastV; achieved
    GFLOP/s and their fraction of the GEMM peak (``peak_gflops``, None: not measured)."""
    vanilla = next(r for r in rows if r["method"] == VANILLA)
    fastv = {r["keep_ratio"]: r for r in rows if r["method"] == "fastv"}
    for row in rows:
        ms, flops = row["ms"]["median"], row["flops"]
        row["gflops_per_s"] = flops["total"] / ms / 1e6  # FLOPs per ms / 1e6 = GFLOP/s
        row["peak_fraction"] = row["gflops_per_s"] / peak_gflops if peak_gflops else None
        row["speedup"] = vanilla["ms"]["median"] / ms
        row["flops_ratio"] = flops["total"] / vanilla["flops"]["total"]
        row["flops_limit"] = vanilla["flops"]["total"] / flops["total"]
        row["efficiency"] = row["speedup"] / row["flops_limit"]
        row["llm_flops_ratio"] = flops["llm"] / vanilla["flops"]["llm"]
        row["llm_flops_limit"] = vanilla["flops"]["llm"] / flops["llm"]
        if row["llm_ms"] is not None and vanilla["llm_ms"]:
            row["llm_speedup"] = vanilla["llm_ms"] / row["llm_ms"]
            row["llm_efficiency"] = row["llm_speedup"] / row["llm_flops_limit"]
        else:
            row["llm_speedup"] = row["llm_efficiency"] = None
        # The paper's reading (its Table 1): whole-step speed-up against the Eq. 13 LLM limit.
        row["efficiency_vs_eq13"] = row["speedup"] * row["analytic_llm_flops"]["ratio"]
        reference = fastv.get(row["keep_ratio"])
        row["ms_vs_fastv"] = ms / reference["ms"]["median"] if reference is not None else None


def evaluate_targets(rows: list[dict[str, Any]], dtype: str | None = None) -> dict[str, Any]:
    """The issue's targets, checked on the VLA-Pruner rows (and the vanilla step's share of the GEMM
    peak, for float32 and bfloat16 when the peak was measured)."""
    checks = []
    vanilla = next((r for r in rows if r["method"] == VANILLA), None)
    if vanilla is not None and vanilla.get("peak_fraction") is not None and dtype in PEAK_FRACTION_TARGETS:
        limit = PEAK_FRACTION_TARGETS[dtype]
        checks.append({"keep_ratio": None, "target": "peak_fraction", "value": vanilla["peak_fraction"],
                       "limit": limit, "met": vanilla["peak_fraction"] >= limit})
    for row in rows:
        if row["method"] != "vla_pruner":
            continue
        keep = row["keep_ratio"]
        checks.append({"keep_ratio": keep, "target": "efficiency", "value": row["efficiency"],
                       "limit": TARGETS["efficiency_min"], "met": row["efficiency"] >= TARGETS["efficiency_min"]})
        if row["ms_vs_fastv"] is not None:
            checks.append({"keep_ratio": keep, "target": "ms_vs_fastv", "value": row["ms_vs_fastv"],
                           "limit": TARGETS["ms_vs_fastv_max"],
                           "met": row["ms_vs_fastv"] <= TARGETS["ms_vs_fastv_max"]})
        checks.append({"keep_ratio": keep, "target": "select_pct", "value": row["select_pct"],
                       "limit": TARGETS["select_pct_max"], "met": row["select_pct"] <= TARGETS["select_pct_max"]})
    return {"limits": dict(TARGETS), "checks": checks, "all_met": all(c["met"] for c in checks) if checks else None}


# ---------------------------------------------------------------------------------- describing
def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device, dtype: torch.dtype, load_before=None, load_after=None,
                        dtype_reason: str | None = None) -> dict[str, Any]:
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    description = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "dtype_reason": dtype_reason,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
        description["cuda"] = torch.version.cuda
    return description


def model_description(policy: Policy, settings: BenchSettings, vanilla_output) -> dict[str, Any]:
    config = policy.config
    text = config.text_config
    towers = [{"timm_model_id": t.timm_model_id, **(t.overrides or {})} for t in config.towers]
    return {
        "preset": settings.preset if settings.checkpoint is None else None,
        "checkpoint": settings.checkpoint,
        "weights": "checkpoint" if settings.checkpoint else f"random (seed {settings.seed})",
        "llm_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "attention_heads": text.num_attention_heads,
        "kv_heads": text.num_key_value_heads or text.num_attention_heads,
        "vision_towers": towers,
        "image_size": config.image_size,
        "views": len(policy.view_names),
        "num_visual": policy.num_visual_tokens,
        "seq_len": int(vanilla_output.seq_len_before),
        "chunk_length": policy.chunk_length,
        "action_dim": policy.action_dim,
        "proprio_dim": policy.proprio_dim,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
    }
