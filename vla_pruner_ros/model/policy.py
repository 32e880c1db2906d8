"""The OpenVLA-OFT policy with the VLA-Pruner hook: ``load_policy`` -> ``Policy.predict``.

    policy = load_policy("checkpoints/tiny")      # dtype auto: bf16 on CUDA / a CPU with native bf16, else float32
    policy.set_pruner(PrunerConfig(method="vla_pruner", keep_ratio=0.25))
    out = policy.predict(images={"fixed": rgb, "wrist": rgb2}, proprio=q, instruction="pick up the cube")
    out.actions                                              # (chunk, action_dim) float64
    policy.reset()                                           # new episode

No ROS here: the node wraps this class.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..pruning import PrunerConfig, make_pruner
from ..pruning.budget import suffix_units
from .checkpoint import load_checkpoint, validate_unnorm_key
from .modeling_llama import PruneRequest
from .precision import DtypeChoice, resolve_dtype
from .processing_oft import (
    ACTION_FRAMES,
    DEFAULT_MAX_INSTRUCTION_TOKENS,
    NORMALIZATION_TYPES,
    OFTImageProcessor,
    PromptBuilder,
    action_mask,
    actions_from_frame,
    load_tokenizer,
    normalize_proprio,
    unnormalize_actions,
)
from .timing import StageTimer

DEFAULT_VIEW_NAMES = ("fixed", "wrist")
STAGES = ("preprocess", "vision", "llm_prefix", "select", "llm_suffix", "action_head")


# ------------------------------------------------------------------------------------ FLOPs
def llm_flops(num_layers: int, hidden_size: int, intermediate_size: int, seq_len: int,
              pruned_seq_len: int | None = None, prune_layer: int | None = None) -> dict[str, float]:
    """Analytic FLOPs of the LLM for one step (paper App. A.2, Eq. 10-13).

    C(n) = 4 n d^2 + 2 n^2 d + 2 n d m per layer; FLOPs_full = T C(mu);
    FLOPs_prune = K C(mu) + (T - K) C(mu~). Returns full, pruned and their ratio.
    """
    def layer_cost(n: int) -> float:
        return 4 * n * hidden_size ** 2 + 2 * n ** 2 * hidden_size + 2 * n * hidden_size * intermediate_size

    full = num_layers * layer_cost(seq_len)
    if pruned_seq_len is None or prune_layer is None:
        pruned = full
    else:
        if not 0 <= prune_layer <= num_layers:
            raise ValueError(f"prune_layer={prune_layer}: expected 0..{num_layers}")
        pruned = prune_layer * layer_cost(seq_len) + (num_layers - prune_layer) * layer_cost(pruned_seq_len)
    return {"full": float(full), "pruned": float(pruned), "ratio": pruned / full}


# ------------------------------------------------------------------------------------ output
@dataclass
class PolicyOutput:
    actions: np.ndarray  # (chunk, action_dim) float64, un-normalised
    normalized_actions: np.ndarray  # (chunk, action_dim) float64, in the model's [-1, 1] space
    kept_indices: np.ndarray  # int64, sorted, over the M visual tokens (all of them when not pruned)
    num_visual_tokens: int  # M
    view_names: tuple[str, ...]  # visual tokens are view-major in this order
    grid: tuple[int, int]  # patch rows, cols of each view (row-major within a view)
    timings: dict[str, float]  # ms per stage (see Policy.predict) and "total"
    pruned: bool  # visual tokens were dropped this step
    warmup: bool  # the pruner is still filling its action-attention history
    prune_layer: int | None  # K when pruned
    pruner: dict[str, Any]  # the pruner's diagnostics (pool sizes, overlap, select_ms, ...)
    s_vl: np.ndarray | None  # (M,) prefill "vl" scores used for selection
    s_act: np.ndarray | None  # (M,) this step's action-query attention (0 where not observed)
    s_act_observed: np.ndarray | None  # (M,) bool: tokens present in every action layer
    seq_len_before: int  # decoder rows before pruning
    seq_len_after: int  # decoder rows after pruning (== before when not pruned)
    flops: dict[str, float]  # analytic LLM FLOPs: full, pruned, ratio
    instruction: str  # the instruction as used (lower-cased, possibly truncated)


# ------------------------------------------------------------------------------------ policy
class Policy:
    """OpenVLA-OFT policy. Build it with ``load_policy``."""

    def __init__(self, model, info, tokenizer, unnorm_key: str, device: torch.device, dtype: torch.dtype,
                 view_names: tuple[str, ...], center_crop: bool, normalization_type: str,
                 max_instruction_tokens: int, profile: bool, dtype_reason: str = "requested") -> None:
        self.model, self.info, self.tokenizer = model, info, tokenizer
        self.config = info.config
        self.device, self.dtype = device, dtype
        self.dtype_choice = DtypeChoice(dtype, dtype_reason)  # what it runs in, and why (printed at load)
        self.view_names = view_names
        self.unnorm_key = unnorm_key
        self.normalization_type = normalization_type
        self.profile = profile
        self.image_processor = OFTImageProcessor(self.config, center_crop=center_crop)
        self.prompt_builder = PromptBuilder(tokenizer, max_instruction_tokens)
        statistics = info.statistics[unnorm_key]
        self.action_stats, self.proprio_stats = statistics["action"], statistics.get("proprio")
        # what the head's chunk means (processing_oft.ACTION_FRAMES); real OFT checkpoints: absolute
        self.action_frame = info.sidecar.get("action_frame", "absolute")
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f"{info.path}: action_frame {self.action_frame!r}: expected one of {ACTION_FRAMES}")
        if self.action_frame == "relative" and self.proprio_dim != self.action_dim:
            raise ValueError(f"{info.path}: action_frame 'relative' needs a proprio projector of the action's "
                             f"size ({self.action_dim}), found {self.proprio_dim}")
        self._action_mask = action_mask(self.action_stats, self.action_dim)  # the dims that are offsets
        self.stop_token_id = int(tokenizer.eos_token_id)
        self.pruner_config: PrunerConfig | None = None
        self._pruner = None
        self._pending: tuple[PrunerConfig | None] | None = None
        self._instruction: str | None = None

    # -- properties --------------------------------------------------------------------------
    @property
    def num_visual_tokens(self) -> int:
        return len(self.view_names) * self.config.patches_per_view

    @property
    def grid(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def chunk_length(self) -> int:
        return self.model.chunk_length

    @property
    def action_dim(self) -> int:
        return self.model.action_dim

    @property
    def proprio_dim(self) -> int | None:
        return self.model.proprio_dim

    @property
    def num_layers(self) -> int:
        return self.model.decoder.num_layers

    def preprocessing_summary(self) -> str:
        """One line for start-up logs: what this policy does to its inputs and outputs."""
        stats = self.info.statistics_file.name if getattr(self.info, "statistics_file", None) else "?"
        return (f"center crop {'on' if self.image_processor.center_crop else 'off'}, views "
                f"{', '.join(self.view_names)} at {self.config.image_size} px, unnorm key {self.unnorm_key!r} "
                f"(statistics from {stats}, {self.normalization_type}), chunk {self.chunk_length}"
                + (", actions relative to the proprio" if self.action_frame == "relative" else ""))

    # -- pruner ------------------------------------------------------------------------------
    @property
    def pruner(self):
        """The pruner object in use (None when unpruned); read-only access for diagnostics."""
        return self._pruner

    def set_pruner(self, config: PrunerConfig | None) -> None:
        """Use ``config`` from the next ``predict`` on (None: no pruning).

        Changing only ``keep_ratio`` keeps the pruner's action-attention history; any other change
        (method, window, smoothing, prune layer, ...) starts a fresh history.
        """
        if config is not None and not isinstance(config, PrunerConfig):
            raise ValueError(f"set_pruner: expected a PrunerConfig or None, got {type(config).__name__}")
        if config is not None:
            if config.prune_layer >= self.num_layers:
                raise ValueError(f"PrunerConfig.prune_layer={config.prune_layer}: the decoder has "
                                 f"{self.num_layers} layers, so K must be <= {self.num_layers - 1}")
            too_deep = [layer for layer in (config.action_layers or ()) if layer >= self.num_layers]
            if too_deep:
                raise ValueError(f"PrunerConfig.action_layers={config.action_layers}: layers {too_deep} do not "
                                 f"exist (the decoder has {self.num_layers})")
        self._pending = (config,)

    def _apply_pending_pruner(self) -> None:
        if self._pending is None:
            return
        (config,) = self._pending
        self._pending = None
        old = self.pruner_config
        if config is None:
            self._pruner = None
        elif self._pruner is not None and old is not None and dataclasses.replace(
                old, keep_ratio=config.keep_ratio) == config:
            # Only the budget changes: the history (and its warm-up) stays valid.
            self._pruner.config = config
        else:
            self._pruner = make_pruner(config)
        self.pruner_config = config

    def fork(self, pruner: PrunerConfig | None = None) -> "Policy":
        """A second policy on the same model weights, tokenizer and settings, with its own pruner
        state: several pruning configurations can then be stepped side by side on one model (the
        benchmark) without ``set_pruner`` resetting a shared history."""
        twin = copy.copy(self)  # shallow: the model and processors are shared, not duplicated
        twin.pruner_config, twin._pruner, twin._pending, twin._instruction = None, None, None, None
        if pruner is not None:
            twin.set_pruner(pruner)
        return twin

    def reset(self) -> None:
        """New episode: forget the pruner's action-attention history (warm-up starts again)."""
        if self._pruner is not None:
            self._pruner.reset()
        self._instruction = None

    def warm_up(self) -> float:
        """One throw-away unpruned step on grey frames, so that the first real step does not pay
        for lazy allocations and first-call kernel set-up (about twice a step's time here). The
        pruner's state (history, pending change, instruction) is left exactly as it was.
        Returns the milliseconds it took."""
        size = self.config.image_size
        images = {view: np.full((size, size, 3), 128, dtype=np.uint8) for view in self.view_names}
        proprio = None if self.model.proprio_projector is None else np.zeros(self.proprio_dim)
        saved = (self._pruner, self._pending, self._instruction)
        self._pruner, self._pending = None, None
        started = time.perf_counter()
        try:
            self.predict(images, proprio, "warm up")
        finally:
            self._pruner, self._pending, self._instruction = saved
        return (time.perf_counter() - started) * 1000.0

    # -- inference ---------------------------------------------------------------------------
    def _check_images(self, images: dict) -> list[tuple[str, np.ndarray]]:
        if not isinstance(images, dict):
            raise ValueError(f"images: expected a dict {{view name: HxWx3 uint8}}, got {type(images).__name__}")
        missing = [v for v in self.view_names if v not in images]
        extra = sorted(set(images) - set(self.view_names))
        if missing or extra:
            raise ValueError(f"images: expected views {list(self.view_names)}; missing {missing}, unexpected {extra}")
        return [(name, images[name]) for name in self.view_names]

    def _proprio_tensor(self, proprio) -> torch.Tensor | None:
        if self.model.proprio_projector is None:
            if proprio is not None:
                warnings.warn("proprio is ignored: this checkpoint has no proprio projector", stacklevel=3)
            return None
        if proprio is None:
            raise ValueError(f"proprio: this checkpoint needs a ({self.proprio_dim},) proprio vector")
        proprio = np.asarray(proprio, dtype=np.float64)
        if proprio.shape != (self.proprio_dim,):
            raise ValueError(f"proprio: expected shape ({self.proprio_dim},), got {proprio.shape}")
        normalized = normalize_proprio(proprio, self.proprio_stats, self.normalization_type)
        return torch.as_tensor(normalized, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def predict(self, images: dict[str, np.ndarray], proprio: np.ndarray | None = None,
                instruction: str = "") -> PolicyOutput:
        """One policy step: an action chunk for the current observation.

        ``images``: {view name: HxWx3 uint8} for every view in ``view_names``; ``proprio``: the raw
        (un-normalised) proprio vector; ``instruction``: the task, lower-cased as OFT does. A new
        instruction (after lower-casing) resets the pruner's history, as a new episode does.

        Timings (ms): preprocess, vision, llm_prefix (decoder layers < K, all layers when not
        pruned), select, llm_suffix, action_head, total. On CUDA the stages are only measured when
        the policy was loaded with ``profile=True`` (they need device synchronisation); otherwise
        only ``total``.
        """
        start = time.perf_counter()
        on_cuda = self.device.type == "cuda"
        sync = (lambda: torch.cuda.synchronize(self.device)) if on_cuda else None
        timer = StageTimer(enabled=self.profile or not on_cuda, synchronize=sync if self.profile else None)
        self._apply_pending_pruner()

        with timer.stage("preprocess"):
            views = self._check_images(images)
            instruction_used = self.prompt_builder.normalize_instruction(instruction)
            if instruction_used != self._instruction:
                if self._pruner is not None and self._instruction is not None:
                    self._pruner.reset(reason="instruction")  # a shift fallback may prune the refill
                self._instruction = instruction_used
            input_ids, instruction_used = self.prompt_builder(instruction_used)
            pixel_values = self.image_processor(views).to(device=self.device, dtype=self.dtype)
            proprio_tensor = self._proprio_tensor(proprio)
            input_ids = input_ids.to(self.device)

        num_visual = self.num_visual_tokens
        plan = self._pruner.plan(num_visual_tokens=num_visual, num_layers=self.num_layers) if self._pruner else None
        selection: dict[str, Any] = {}

        def select(features: torch.Tensor, prefill_scores: dict[str, torch.Tensor]) -> torch.Tensor:
            chosen = self._pruner.select(features=features, prefill_scores=prefill_scores)
            selection["diagnostics"] = chosen.diagnostics
            return chosen.kept

        prune = None
        if plan is not None and plan.prune:
            prune = PruneRequest(layer=plan.layer, select=select, prefill_groups=plan.prefill_groups,
                                 score_layers=plan.score_layers_vl or None)
        prediction = self.model(
            pixel_values, input_ids, self.stop_token_id, proprio=proprio_tensor, prune=prune,
            action_layers=tuple(plan.action_layers) if plan is not None else (), timer=timer)
        decoder = prediction.decoder
        if plan is not None:
            if plan.action_layers:
                self._pruner.observe(action_scores=decoder.action_scores, observed=decoder.action_observed)
            if "diagnostics" not in selection:  # unpruned step: the pruner still reports its state
                selection["diagnostics"] = self._pruner.select().diagnostics

        normalized = prediction.normalized_actions.cpu().numpy().astype(np.float64)
        actions = unnormalize_actions(normalized, self.action_stats, self.normalization_type)
        actions = actions_from_frame(actions, proprio, self.action_frame, self._action_mask)
        kept = decoder.kept_visual.cpu().numpy() if decoder.kept_visual is not None else np.arange(num_visual)
        text = self.config.text_config
        seq_before, seq_after = prediction.layout.length, decoder.layer_rows[-1]
        flops = llm_flops(text.num_hidden_layers, text.hidden_size, text.intermediate_size, seq_before,
                          seq_after if prune else None, prune.layer if prune else None)
        timings = {stage: timer.ms.get(stage, 0.0) for stage in STAGES} if timer.enabled else {}
        timings["total"] = (time.perf_counter() - start) * 1e3
        if self._pruner is not None and self._pruner.latency is not None and timer.enabled:
            # latency budget (issue 17): the layers after K are the part that scales with kept tokens
            variable = timings["llm_suffix"] if prune else timings["llm_prefix"] * (
                1 - self._pruner.config.prune_layer / self.num_layers)
            self._pruner.record_step(timings["total"], variable, len(kept), suffix_units(
                text.num_hidden_layers, self._pruner.config.prune_layer, text.hidden_size,
                text.intermediate_size, seq_before - num_visual))
        s_vl = decoder.prefill_scores.get("vl")
        s_act = decoder.action_scores
        if s_act is not None:
            s_act = torch.where(decoder.action_observed, s_act, torch.zeros_like(s_act))
        return PolicyOutput(
            actions=actions,
            normalized_actions=normalized,
            kept_indices=kept.astype(np.int64),
            num_visual_tokens=num_visual,
            view_names=self.view_names,
            grid=self.grid,
            timings=timings,
            pruned=prune is not None,
            warmup=bool(plan.warmup) if plan is not None else False,
            prune_layer=prune.layer if prune else None,
            pruner=dict(selection.get("diagnostics", {})),
            s_vl=s_vl.float().cpu().numpy() if s_vl is not None else None,
            s_act=s_act.float().cpu().numpy() if s_act is not None else None,
            s_act_observed=decoder.action_observed.cpu().numpy() if decoder.action_observed is not None else None,
            seq_len_before=seq_before,
            seq_len_after=seq_after,
            flops=flops,
            instruction=instruction_used,
        )


def check_sequence_fits(policy: Policy) -> None:
    """ValueError (one line) when the longest step sequence -- <s>, every view's patches, proprio, the
    longest prompt, chunk_length * action_dim placeholders, </s> -- exceeds the positions the LLM
    was built for (text_config.max_position_embeddings). A chunk_length of 100000 (parameter or
    sidecar) would otherwise make one step build a 700000-token sequence: minutes and gigabytes,
    with nothing published and Ctrl-C waiting on it."""
    builder = policy.prompt_builder
    limit = int(policy.config.text_config.max_position_embeddings)
    action_dim, chunk = int(policy.model.action_dim), int(policy.model.chunk_length)
    fixed = (1 + int(policy.num_visual_tokens) + (1 if policy.model.proprio_projector is not None else 0)
             + builder._template_tokens + builder.max_instruction_tokens + 1 + 1)
    if fixed + chunk * action_dim > limit:
        largest = max(0, (limit - fixed) // action_dim)
        raise ValueError(
            f"chunk_length {chunk} does not fit {policy.info.path}: {chunk} x {action_dim} action tokens + {fixed} "
            f"others = {fixed + chunk * action_dim} positions > the model's max_position_embeddings {limit} "
            f"(at most chunk_length {largest}; OFT checkpoints are trained with 8 on LIBERO)")


def load_policy(path: str | os.PathLike, device: str | torch.device | None = None,
                dtype: torch.dtype | str | None = None,
                chunk_length: int | None = None, num_images: int | None = None, unnorm_key: str | None = None,
                view_names: tuple[str, ...] | None = None, center_crop: bool | None = None,
                normalization_type: str | None = None,
                max_instruction_tokens: int = DEFAULT_MAX_INSTRUCTION_TOKENS, profile: bool = False,
                pruner: PrunerConfig | None = None, announce: bool = True) -> Policy:
    """Load an OFT checkpoint directory as a ``Policy``; nothing is fetched from a hub.

    device: default CUDA when available, else CPU. dtype: a torch dtype, its name, or None / "auto":
    bfloat16 on CUDA and on a CPU that reports native bf16 (avx512_bf16 / AMX), float32 on any other
    CPU (see ``precision.resolve_dtype``). ``announce``: print the dtype and why to stderr.
    chunk_length / num_images / unnorm_key / center_crop / normalization_type: not in real
    config.json files; default to the checkpoint's ``vla_pruner_oft.json`` when present, else chunk 8,
    2 views, the only statistics key (several keys: unnorm_key is required), center crop on (upstream's),
    "bounds_q99". view_names: names of the image views, default ("fixed", "wrist")[:num_images].
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    choice = resolve_dtype(dtype, device)
    dtype = choice.dtype
    loaded = load_checkpoint(path, device=device, dtype=dtype, chunk_length=chunk_length, num_images=num_images)
    info = loaded.info
    key = validate_unnorm_key(info, unnorm_key)
    if view_names is None:
        view_names = tuple(info.sidecar.get("view_names") or DEFAULT_VIEW_NAMES[:info.num_images])
        if len(view_names) < info.num_images:
            view_names += tuple(f"wrist_{i}" for i in range(len(view_names), info.num_images))
    view_names = tuple(view_names)
    if len(view_names) != info.num_images or len(set(view_names)) != len(view_names):
        raise ValueError(f"view_names={view_names}: expected {info.num_images} distinct names (num_images)")
    if center_crop is None:
        center_crop = info.center_crop  # the sidecar's, else upstream's default (on)
    normalization_type = normalization_type or info.sidecar.get("normalization_type", "bounds_q99")
    if normalization_type not in NORMALIZATION_TYPES:
        raise ValueError(f"normalization_type={normalization_type!r}: expected one of {NORMALIZATION_TYPES}")
    tokenizer = load_tokenizer(info.path)
    if len(tokenizer) > info.config.text_config.vocab_size:
        raise ValueError(f"{info.path}: the tokenizer has {len(tokenizer)} ids, more than the embedding table's "
                         f"{info.config.text_config.vocab_size}")
    policy = Policy(loaded.model, info, tokenizer, key, device, dtype, view_names, center_crop,
                    normalization_type, max_instruction_tokens, profile, dtype_reason=choice.reason)
    check_sequence_fits(policy)  # issue 14: a huge chunk_length must be refused, not run for minutes
    if announce:
        print(f"vla-pruner: policy {info.path} runs in {choice.describe()} on {device}", file=sys.stderr, flush=True)
    if pruner is not None:
        policy.set_pruner(pruner)
    return policy
