"""Behaviour cloning of the small OFT-format policy on recorded sim demonstrations.

OFT's recipe at a size 2 CPU cores can train: L1 loss on BOUNDS_Q99-normalised action chunks
(parallel decoding, no tokens), AdamW with a linear warm-up and a cosine decay, gradient clipping.
The model is the ``xarm6-sim`` preset built by the checkpoint writer and trained end to end (vision
towers, projector, LLM, proprio projector, L1 head); the result is written with
``save_checkpoint`` in the OFT checkpoint layout, with the training data's statistics, so
``load_policy``, the pruning hook and the ROS node use it unchanged.

Training state (weights, optimizer, history) is saved to ``work_dir`` every ``save_every`` steps;
``resume=True`` continues from it. The state file holds only tensors and plain data and is read
with ``torch.load(weights_only=True)`` (``load_training_state``): a planted pickle in a work dir is
refused instead of run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import PRESETS, build_model, read_sidecar, save_checkpoint
from ..model.processing_oft import ACTION_FRAMES, PromptBuilder, load_tokenizer
from ..model.tokenization_oft import build_tokenizer, save_tokenizer_files
from ..sim import CUBE_COLOURS
from .dataset import VIEW_NAMES, SimDataset, pixel_tensor, read_meta

UNNORM_KEY = "xarm6_sim_reach"
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"


def unnorm_key_for(task: str) -> str:
    """The statistics key a checkpoint trained on ``task`` is written with."""
    return UNNORM_KEY if task == "above" else f"xarm6_sim_{task}"


def load_training_state(path: str | os.PathLike) -> dict:
    """A saved training state, read without unpickling code (tensors, numbers, strings, lists,
    dicts only). A file that needs more (e.g. a planted pickle) is refused with a ValueError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a training state this tool can read safely ({first}); "
                         "it is not loaded (it may hold code). Use another work dir or delete the file") from None
    if not isinstance(state, dict) or not {"model", "config", "step"} <= set(state):
        raise ValueError(f"{path}: not a train-sim training state (expected model, config and step entries)")
    return state


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    out_dir: str  # the checkpoint directory to write (replaced when it exists and overwrite is set)
    work_dir: str  # training state, log, tokenizer cache
    preset: str = "xarm6-sim"
    steps: int = 4000
    batch_size: int = 16
    learning_rate: float = 5e-4
    min_learning_rate_ratio: float = 0.1  # cosine decays to this fraction of the peak
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    validation_fraction: float = 0.05
    eval_every: int = 100
    eval_samples: int = 384
    save_every: int = 100
    seed: int = 0
    threads: int = 2
    weights_dtype: str = "bfloat16"  # like the real checkpoints
    aux_weight: float = 0.5  # weight of the training-only probe losses (0: plain OFT L1 only)
    loss_plot: str | None = None  # PNG path; default work_dir/loss_curve.png
    init_from: str | None = None  # a trained checkpoint to start from (warm_start); None: random init
    # pregrasp: before step 1, train the vision towers alone to read the yaw error from the wrist view
    # (pretrain_wrist_yaw) for this many batches of ``yaw_pretrain_batch`` near-cube samples
    yaw_pretrain_steps: int = 0
    yaw_pretrain_batch: int = 32
    yaw_pretrain_lr: float = 5e-4
    # what the head learns to output (processing_oft.ACTION_FRAMES): "relative" = offsets from the
    # proprio of the sample, written to the checkpoint's sidecar so every loader adds them back
    action_frame: str = "absolute"
    overwrite: bool = False
    resume: bool = True

    def __post_init__(self):
        if self.preset not in PRESETS or not PRESETS[self.preset].writable:
            raise ValueError(f"TrainConfig.preset={self.preset!r}: expected one of "
                             f"{sorted(n for n, p in PRESETS.items() if p.writable)}")
        for name in ("steps", "batch_size", "eval_every", "eval_samples", "save_every", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r}: expected a positive integer")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate={self.learning_rate!r}: expected > 0")
        if not 0.0 <= self.min_learning_rate_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_learning_rate_ratio={self.min_learning_rate_ratio!r}: expected in [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError("TrainConfig: warmup_steps and weight_decay must be >= 0, grad_clip > 0 "
                             f"(got {self.warmup_steps}, {self.weight_decay}, {self.grad_clip})")
        if self.yaw_pretrain_steps < 0 or self.yaw_pretrain_batch < 1 or not self.yaw_pretrain_lr > 0:
            raise ValueError("TrainConfig: yaw_pretrain_steps must be >= 0, yaw_pretrain_batch >= 1, "
                             f"yaw_pretrain_lr > 0 (got {self.yaw_pretrain_steps}, {self.yaw_pretrain_batch}, "
                             f"{self.yaw_pretrain_lr})")
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f"TrainConfig.action_frame={self.action_frame!r}: expected one of {ACTION_FRAMES}")
        if not self.aux_weight >= 0:
            raise ValueError(f"TrainConfig.aux_weight={self.aux_weight!r}: expected >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"TrainConfig.validation_fraction={self.validation_fraction!r}: expected in [0, 1)")


def warm_start(model, checkpoint: str | os.PathLike) -> dict:
    """Copy a trained checkpoint's weights into ``model`` (e.g. the reach policy into the deeper
    pre-grasp preset): every tensor of equal name and shape; vision position embeddings resampled
    to the new patch grid; LLM layers the source lacks keep their random init with their output
    projections (o_proj, down_proj) zeroed, so they start as identities and the warm-started model
    computes what the source did. Returns counts {"copied", "resampled", "identity_layers"}."""
    from timm.layers import resample_abs_pos_embed

    from ..model.checkpoint import load_checkpoint

    source = load_checkpoint(checkpoint).model.state_dict()
    target = model.state_dict()
    counts = {"copied": 0, "resampled": 0, "identity_layers": 0}
    with torch.no_grad():
        for name, tensor in target.items():
            if name not in source:
                continue
            src = source[name]
            if src.shape == tensor.shape:
                tensor.copy_(src)
                counts["copied"] += 1
            elif name.endswith("pos_embed") and src.ndim == 3 and src.shape[2] == tensor.shape[2]:
                old, new = int(round(src.shape[1] ** 0.5)), int(round(tensor.shape[1] ** 0.5))
                if old * old == src.shape[1] and new * new == tensor.shape[1]:
                    tensor.copy_(resample_abs_pos_embed(src, [new, new], [old, old], num_prefix_tokens=0))
                    counts["resampled"] += 1
        layers = model.language_model.model.layers
        have = {int(n.split(".")[3]) for n in source if n.startswith("language_model.model.layers.")}
        for index, layer in enumerate(layers):
            if index not in have:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
                counts["identity_layers"] += 1
    return counts


def dataset_task(path: str | os.PathLike) -> str:
    """The task a recorded dataset was recorded for (its metadata only; no images are read)."""
    return read_meta(path)["config"].get("task", "above")


def inherited_statistics(init_from: str | os.PathLike | None, dataset: str | os.PathLike,
                         action_frame: str = "absolute") -> dict | None:
    """The normalisation statistics to train with when warm-starting from ``init_from``: the source
    checkpoint's own, when it was trained on the same task in the same action frame (fine-tuning,
    e.g. on a dataset extended by DAgger, keeps the scale its outputs were learnt in); None (compute
    them from the data) for a checkpoint of another task or frame, or no warm start."""
    if not init_from:
        return None
    path = Path(init_from) / "dataset_statistics.json"
    if not path.is_file():
        return None
    if read_sidecar(Path(init_from)).get("action_frame", "absolute") != action_frame:
        return None
    with open(path, encoding="utf-8") as f:
        statistics = json.load(f)
    return statistics.get(unnorm_key_for(dataset_task(dataset)))


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to ``min_learning_rate_ratio`` of it."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_learning_rate_ratio
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: no decay on norms, biases, embeddings (most token rows never get a
    gradient here and would otherwise only shrink), position embeddings and tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = (param.ndim < 2 or "embed_tokens" in name or "pos_embed" in name
                or name.endswith(("cls_token", "reg_token", "latent")))
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Batches:
    """Index batches grouped by prompt length (the batched forward needs equal layouts)."""

    indices: np.ndarray
    prompt_length: np.ndarray  # per sample
    batch_size: int
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def sample(self) -> np.ndarray:
        # Draw a sample uniformly, then fill the batch with samples of the same prompt length.
        anchor = self.indices[self.rng.integers(len(self.indices))]
        same = self.indices[self.prompt_length[self.indices] == self.prompt_length[anchor]]
        return np.sort(self.rng.choice(same, size=min(self.batch_size, len(same)), replace=False))

    def sequential(self, limit: int) -> list[np.ndarray]:
        """Deterministic batches over the first ``limit`` indices (validation)."""
        chosen = self.indices[:limit]
        out = []
        for length in np.unique(self.prompt_length[chosen]):
            group = chosen[self.prompt_length[chosen] == length]
            out.extend(group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size))
        return out


class BatchMaker:
    """Turns sample indices into the model's batched inputs (same preprocessing as inference)."""

    def __init__(self, dataset: SimDataset, prompt_builder: PromptBuilder, means, stds):
        self.dataset = dataset
        self.means, self.stds = means, stds
        self.input_ids = [prompt_builder(text)[0] for text in dataset.instructions]
        self.prompt_length = np.array([len(self.input_ids[i]) for i in dataset.instruction])

    def __call__(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        data = self.dataset
        ids = torch.stack([self.input_ids[i] for i in data.instruction[indices]])
        return {
            "pixel_values": pixel_tensor({v: data.views[v][indices] for v in VIEW_NAMES}, self.means, self.stds),
            "input_ids": ids,
            "proprio": torch.from_numpy(data.normalized_proprio[indices]),
            "target": torch.from_numpy(data.normalized_chunks[indices]),
            "target_xy": torch.from_numpy(data.target_xy[indices]),
            "patch_classes": torch.from_numpy(data.patch_classes[indices]),
            "target_class": torch.from_numpy(data.target_class[indices]),
            "patch_cubes": torch.from_numpy(data.patch_cubes[indices]),
            "target_yaw": torch.from_numpy(data.target_yaw[indices]),
            "has_yaw": torch.from_numpy(data.has_yaw[indices]),
        }


class TrainingProbes(torch.nn.Module):
    """Training-only linear probes that give reaching's sub-problems a direct, dense gradient; they
    are not saved in the checkpoint (the policy stays OFT's architecture, trained by OFT's L1 loss
    plus these terms).

    - colour: which cube (if any) each visual token shows, from the projector output (vision);
    - target: whether each visual token shows the cube the instruction names, from the decoder's
      final hidden state of that token (vision x language);
    - position: the named cube's table position from the rows the action head reads (mean);
    - yaw (pregrasp): the yaw error between the fingers and the named cube's nearest face, as
      (sin 4e, cos 4e), from the same rows. Without it the policy's turn is barely related to the
      one it must make (measured on run11's training samples near the cube: correlation 0.36,
      median 12 degrees off the label, train as bad as validation: underfitting, not overfitting);
    - wrist yaw (pregrasp): the same (sin 4e, cos 4e) from the projector output of the wrist patch
      that shows the named cube's top. The wrist camera turns with the fingers, so e is how turned
      the cube looks in that view: a local, visual quantity the towers can learn directly. (The
      readout-only probe stayed at the constant predictor's loss for 800 steps: ~1.0 against ~0.9.)

    Without them the action deltas, small next to the absolute joint targets, leave the policy
    reaching for the average cube position for a long time (measured: still so after 800 steps).
    """

    def __init__(self, width: int, num_classes: int = 1 + len(CUBE_COLOURS)):
        super().__init__()
        self.colour = torch.nn.Linear(width, num_classes)
        self.target = torch.nn.Linear(width, 1)
        self.position = torch.nn.Linear(width, 2)
        self.yaw = torch.nn.Linear(width, 2)
        self.wrist_yaw = torch.nn.Linear(width, 2)
        # "no cube" is by far the most common patch label; weight it down so cubes are not ignored
        self.register_buffer("class_weight", torch.tensor([0.1] + [1.0] * (num_classes - 1)))

    def losses(self, details: dict, batch: dict) -> dict[str, torch.Tensor]:
        classes = batch["patch_classes"].long()  # (B, M)
        colour_logits = self.colour(details["visual"].float())
        colour = torch.nn.functional.cross_entropy(colour_logits.flatten(0, 1), classes.flatten(),
                                                   weight=self.class_weight)
        is_target = (batch["patch_cubes"].long() == batch["target_class"].long()[:, None]).float()
        target_logits = self.target(details["visual_hidden"].float())[..., 0]
        target = torch.nn.functional.binary_cross_entropy_with_logits(
            target_logits, is_target, pos_weight=torch.tensor(20.0))
        readout = details["readout"].float().mean(dim=1)
        position = (self.position(readout) - batch["target_xy"]).abs().mean()
        out = {"colour": colour, "target": target, "position": position}
        has_yaw = batch.get("has_yaw")
        if has_yaw is not None and bool(has_yaw.any()):
            error = (self.yaw(readout) - batch["target_yaw"]).abs().sum(dim=1)
            out["yaw"] = error[has_yaw].mean()
            # the named cube's patch in the wrist view (the second half of the visual tokens)
            wrist = torch.zeros_like(is_target, dtype=torch.bool)
            wrist[:, is_target.shape[1] // 2:] = True
            shown = (is_target > 0) & wrist & has_yaw[:, None]
            if bool(shown.any()):
                patch_error = (self.wrist_yaw(details["visual"].float()) - batch["target_yaw"][:, None]).abs().sum(-1)
                out["wrist_yaw"] = patch_error[shown].mean()
        return out


def near_cube_samples(dataset: SimDataset, indices: np.ndarray, max_horizontal: float = 0.05) -> np.ndarray:
    """Those of ``indices`` with a yaw label and the TCP within ``max_horizontal`` (m) of the named
    cube's axis: the states where the wrist view shows that cube close up."""
    from ..sim.kinematics import XArm6Kinematics

    indices = indices[dataset.has_yaw[indices]]
    if not len(indices):
        return indices
    tcp = XArm6Kinematics().tcp_pose(dataset.proprio[indices, :6].astype(np.float64))[:, :2, 3]
    centres = np.array([dataset.scenes[e].cubes[k].position[:2] for e, k in zip(dataset.episode[indices],
                                                                                dataset.target_cube[indices])])
    return indices[np.linalg.norm(tcp - centres, axis=1) < max_horizontal]


def pretrain_wrist_yaw(model, make_batch: "BatchMaker", train_indices: np.ndarray, val_indices: np.ndarray,
                       steps: int, batch_size: int, learning_rate: float, rng: np.random.Generator,
                       progress: bool = True) -> dict:
    """Train the vision towers and projector alone to read the yaw error (as (sin 4e, cos 4e)) from
    the wrist view, through an attention-pooled head that is dropped afterwards.

    Why: with the whole policy's losses the towers learn this far too slowly (a linear read-out of
    the yaw from run9's features was no better than a constant; the yaw probes barely moved in 2000
    steps), while this direct task teaches the same towers to 3-4 degrees in a few hundred batches
    (measured on rendered wrist views). Returns the validation error before and after."""
    vision = torch.nn.Sequential(model.vision_backbone, model.projector)
    width = model.config.text_config.hidden_size
    pool = torch.nn.Linear(width, 1)
    head = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.GELU(), torch.nn.Linear(64, 2))
    parameters = list(vision.parameters()) + list(pool.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)

    def predict(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = make_batch(indices)
        wrist = batch["pixel_values"][:, VIEW_NAMES.index("wrist")]  # (B, 6, S, S)
        tokens = vision(wrist).reshape(len(indices), -1, width)
        weights = torch.softmax(pool(tokens.float())[..., 0], dim=1)
        return head((weights[..., None] * tokens.float()).sum(dim=1)), batch["target_yaw"]

    def validation_degrees() -> float:
        if not len(val_indices):
            return float("nan")
        vision.eval()
        errors = []
        with torch.no_grad():
            for start in range(0, len(val_indices), 64):
                predicted, target = predict(val_indices[start:start + 64])
                angle = torch.atan2(predicted[:, 0], predicted[:, 1]) - torch.atan2(target[:, 0], target[:, 1])
                errors.append(torch.rad2deg(torch.remainder(angle + np.pi, 2 * np.pi) - np.pi).abs() / 4)
        vision.train()
        return float(torch.cat(errors).median())

    before = validation_degrees()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc="yaw-pretrain", unit="step", dynamic_ncols=True)
    smoothed, first = None, None
    for _ in range(steps):
        predicted, target = predict(rng.choice(train_indices, size=batch_size))
        loss = ((predicted - target) ** 2).sum(dim=1).mean()
        value = float(loss.detach())
        first = value if first is None else first
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"mse": f"{smoothed:.3f}"})
    if bar is not None:
        bar.close()
    return {"steps": steps, "train_samples": int(len(train_indices)), "val_samples": int(len(val_indices)),
            "val_median_deg_before": before, "val_median_deg_after": validation_degrees(),
            "first_mse": first, "final_mse": smoothed}


def losses(model, probes: TrainingProbes | None, batch: dict, stop_token_id: int) -> dict[str, torch.Tensor]:
    """{"action": L1 on the normalised chunk} plus the probes' terms (when given)."""
    details = model.forward_batch(batch["pixel_values"], batch["input_ids"], stop_token_id, batch["proprio"],
                                  return_details=True)
    out = {"action": (details["actions"] - batch["target"]).abs().mean()}
    if probes is not None:
        out.update(probes.losses(details, batch))
    return out


def l1_loss(model, batch: dict, stop_token_id: int) -> torch.Tensor:
    return losses(model, None, batch, stop_token_id)["action"]


def _prompt_tools(work_dir: Path):
    """The tokenizer the checkpoint will ship, loaded the way inference loads it."""
    tokenizer = build_tokenizer(PRESETS["xarm6-sim"].tokenizer_pieces or 32000)
    folder = work_dir / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        save_tokenizer_files(tokenizer, folder, model_max_length=2048)
    hf_tokenizer = load_tokenizer(folder)
    return tokenizer, PromptBuilder(hf_tokenizer), int(hf_tokenizer.eos_token_id)


def plot_losses(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history if "train_loss" in h])
    train = np.array([h["train_loss"] for h in history if "train_loss" in h])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if len(train):
        ax.plot(steps, train, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        window = max(1, min(50, len(train) // 10))
        smooth = np.convolve(train, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train ({window}-step mean)")
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", markersize=3, label="validation (held-out scenes)")
    for name, colour in (("colour", "tab:green"), ("target", "tab:red"), ("position", "tab:purple"),
                         ("yaw", "tab:brown"), ("wrist_yaw", "tab:olive")):
        probe = [(h["step"], h[f"{name}_loss"]) for h in history if f"{name}_loss" in h]
        if len(probe) > 1:
            window = max(1, min(50, len(probe) // 10))
            x, y = np.array(probe).T
            ax.plot(x[window - 1:], np.convolve(y, np.ones(window) / window, mode="valid"), color=colour,
                    linestyle="--", linewidth=0.9, label=f"probe: {name} (training only)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (action: L1 on normalised chunks)")
    ax.set_title(title or "train-sim")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@torch.no_grad()
def validation_loss(model, make_batch: BatchMaker, batches: list[np.ndarray], stop_token_id: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for indices in batches:
        total += float(l1_loss(model, make_batch(indices), stop_token_id)) * len(indices)
        count += len(indices)
    model.train()
    return total / max(1, count)


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train, write the checkpoint directory and the loss curve. Returns a summary dict."""
    started = time.time()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(config.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise ValueError(f"out_dir {out_dir}: exists and is not empty (pass overwrite to replace it)")

    dataset = SimDataset(config.dataset, statistics=inherited_statistics(config.init_from, config.dataset,
                                                                         config.action_frame),
                         action_frame=config.action_frame)
    tokenizer, prompt_builder, stop_token_id = _prompt_tools(work_dir)
    model = build_model(config.preset, seed=config.seed)
    from ..model.processing_oft import OFTImageProcessor

    processor = OFTImageProcessor(model.config)
    if processor.size != dataset.config["image_size"]:
        raise ValueError(f"dataset {config.dataset}: images are {dataset.config['image_size']} px, the "
                         f"{config.preset} preset takes {processor.size} px")
    if model.chunk_length != dataset.config["chunk_length"]:
        raise ValueError(f"dataset chunk_length {dataset.config['chunk_length']} != model chunk {model.chunk_length}")
    make_batch = BatchMaker(dataset, prompt_builder, processor.means, processor.stds)
    train_idx, val_idx = dataset.split_by_episode(config.validation_fraction, seed=config.seed)
    rng = np.random.default_rng(config.seed)
    train_batches = Batches(train_idx, make_batch.prompt_length, config.batch_size, rng)
    val_order = np.random.default_rng(config.seed + 1).permutation(val_idx)
    val_batches = Batches(val_order, make_batch.prompt_length, 64).sequential(config.eval_samples)

    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                                  betas=(0.9, 0.95))
    probe = TrainingProbes(model.config.text_config.hidden_size) if config.aux_weight > 0 else None
    probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=config.learning_rate, betas=(0.9, 0.95),
                                        weight_decay=0.0) if probe is not None else None
    history: list[dict] = []
    step = 0
    state_path = work_dir / STATE_FILE
    if config.resume and state_path.is_file():
        state = load_training_state(state_path)
        if state["config"]["preset"] != config.preset or state["config"]["dataset"] != config.dataset:
            raise ValueError(f"{state_path}: saved for preset {state['config']['preset']!r} / dataset "
                             f"{state['config']['dataset']!r}; use another work_dir or resume=False")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, step = state["history"], state["step"]
        if probe is not None and state.get("probe") is not None:  # absent: saved without the probe
            # A state saved before the yaw probe existed lacks its weights: those start fresh, and
            # the probe optimiser's moments (laid out per parameter) are not reusable then.
            missing = probe.load_state_dict(state["probe"], strict=False).missing_keys
            if not missing:
                probe_optimizer.load_state_dict(state["probe_optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    elif config.init_from:
        print(f"train-sim: warm start from {config.init_from}: {warm_start(model, config.init_from)}")
    model.train()
    yaw_pretrain = state.get("yaw_pretrain") if step else None
    if config.yaw_pretrain_steps and step == 0:
        near_train, near_val = near_cube_samples(dataset, train_idx), near_cube_samples(dataset, val_idx)
        if not len(near_train):
            raise ValueError(f"dataset {config.dataset}: no near-cube samples with a yaw label for "
                             "yaw_pretrain_steps (a pregrasp dataset is needed)")
        yaw_pretrain = pretrain_wrist_yaw(model, make_batch, near_train, near_val, config.yaw_pretrain_steps,
                                          config.yaw_pretrain_batch, config.yaw_pretrain_lr,
                                          np.random.default_rng([config.seed, 97]), progress=progress)
        print(f"train-sim: wrist yaw pretraining: {json.dumps(yaw_pretrain)}")

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                    "probe": probe.state_dict() if probe is not None else None,
                    "probe_optimizer": probe_optimizer.state_dict() if probe is not None else None,
                    "step": step, "config": asdict(config), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "yaw_pretrain": yaw_pretrain}, tmp)
        os.replace(tmp, state_path)

    elapsed_before = history[-1]["elapsed_s"] if history else 0.0  # wall time of earlier sessions
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, initial=step, desc="train-sim", unit="step", dynamic_ncols=True)
    smoothed = None
    log = open(work_dir / LOG_FILE, "w", encoding="utf-8")  # the saved history, then this session's steps
    for entry in history:
        log.write(json.dumps(entry) + "\n")
    try:
        while step < config.steps:
            lr = learning_rate_at(step, config)
            optimizers = [optimizer] + ([probe_optimizer] if probe is not None else [])
            for group in (g for o in optimizers for g in o.param_groups):
                group["lr"] = lr
            batch = make_batch(train_batches.sample())
            parts = losses(model, probe, batch, stop_token_id)
            aux = sum(v for k, v in parts.items() if k != "action")
            loss = parts["action"] + config.aux_weight * aux if probe is not None else parts["action"]
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            for o in optimizers:
                o.step()
            step += 1
            value = float(parts["action"].detach())
            if not math.isfinite(value):
                raise RuntimeError(f"step {step}: the loss is {value}; lower the learning rate")
            smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
            entry = {"step": step, "train_loss": value, "lr": lr, "grad_norm": grad_norm,
                     "elapsed_s": elapsed_before + time.time() - started}
            entry.update({f"{k}_loss": float(v.detach()) for k, v in parts.items() if k != "action"})
            if step % config.eval_every == 0 or step == config.steps:
                entry["val_loss"] = validation_loss(model, make_batch, val_batches, stop_token_id) if val_batches \
                    else float("nan")
            history.append(entry)
            log.write(json.dumps(entry) + "\n")
            log.flush()
            if bar is not None:
                bar.update(1)
                postfix = {"loss": f"{smoothed:.4f}", "lr": f"{lr:.1e}"}
                last_val = next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None)
                if last_val is not None:
                    postfix["val"] = f"{last_val:.4f}"
                bar.set_postfix(postfix)
            if step % config.save_every == 0 or step == config.steps:
                save_state()
                plot_losses(history, config.loss_plot or work_dir / "loss_curve.png",
                            title=f"train-sim: {config.preset}, batch {config.batch_size}")
    finally:
        log.close()
        if bar is not None:
            bar.close()

    model.eval()
    unnorm_key = unnorm_key_for(dataset.config.get("task", "above"))
    statistics = {unnorm_key: dataset.statistics}
    write_checkpoint(model, out_dir, statistics, tokenizer, config, step, unnorm_key)
    summary = {
        "steps": step,
        "final_train_loss_mean_last_50": float(np.mean([h["train_loss"] for h in history[-50:]])),
        "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
        "wall_s_this_run": time.time() - started,
        "train_samples": int(len(train_idx)),
        "val_samples": int(len(val_idx)),
        "dataset": dataset.path,
        "dataset_episodes": dataset.num_episodes,
        "checkpoint": str(out_dir),
        "checkpoint_mb": sum(f.stat().st_size for f in out_dir.iterdir()) / 1e6,
        "yaw_pretrain": yaw_pretrain,
    }
    with open(out_dir / "training.json", "w", encoding="utf-8") as f:
        json.dump({"config": asdict(config), "dataset_config": dataset.config, "summary": summary}, f, indent=2)
        f.write("\n")
    return summary


def export_checkpoint(config: TrainConfig) -> Path:
    """Write the checkpoint directory from the latest saved training state (e.g. mid-run)."""
    from .dataset import statistics_from_file

    state_path = Path(config.work_dir) / STATE_FILE
    if not state_path.is_file():
        raise ValueError(f"{state_path}: no training state to export")
    out_dir = Path(config.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise ValueError(f"out_dir {out_dir}: exists and is not empty (pass overwrite to replace it)")
    state = load_training_state(state_path)
    model = build_model(state["config"]["preset"], seed=config.seed)
    model.load_state_dict(state["model"])
    tokenizer, _, _ = _prompt_tools(Path(config.work_dir))
    frame = state["config"].get("action_frame", "absolute")
    statistics, task = statistics_from_file(state["config"]["dataset"], with_task=True, action_frame=frame)
    statistics = inherited_statistics(state["config"].get("init_from"), state["config"]["dataset"], frame) or statistics
    unnorm_key = unnorm_key_for(task)
    return write_checkpoint(model.eval(), out_dir, {unnorm_key: statistics}, tokenizer,
                            TrainConfig(**{**state["config"], "out_dir": str(out_dir)}), state["step"], unnorm_key)


def write_checkpoint(model, out_dir: Path, statistics: dict, tokenizer, config: TrainConfig, step: int,
                     unnorm_key: str = UNNORM_KEY) -> Path:
    """Write to a temporary sibling, then swap it in: a failed write never leaves half a checkpoint."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        save_checkpoint(model, staging, statistics, tokenizer, preset_name=config.preset, seed=config.seed,
                        step=step, unnorm_key=unnorm_key, weights_dtype=config.weights_dtype,
                        view_names=VIEW_NAMES, action_frame=config.action_frame)
        # mkdtemp makes a private (0700) folder; a shipped checkpoint should be readable by all.
        os.chmod(staging, 0o755)
        for file in staging.iterdir():
            os.chmod(file, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir
