"""One control step, from an observation to safe joint targets, without ROS.

The policy node calls ``PolicyRunner.step`` from its worker thread; the offline replay calls
the same method for each step of a bag. Everything a step publishes (trajectory points,
retained-token mask, stats) is derived here as plain values.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..pruning import PrunerConfig
from .params import NodeSettings
from .robot_config import RobotConfig
from .safety import SafeChunk, check_joint_state, make_safe_chunk, reanchor_chunk, velocity_limit


@dataclass
class Observation:
    images: dict[str, np.ndarray]  # view name -> H x W x 3 uint8 RGB
    joint_positions: np.ndarray  # (J,) in RobotConfig.joints order, rad
    gripper_position: float  # gripper joint position (0 = open)
    instruction: str
    stamp: float  # seconds: the newest input stamp this observation was built from


def view_grids(output) -> list[tuple[int, int]]:
    """(rows, cols) of each view's patch grid (every view of a checkpoint has the same grid)."""
    rows, cols = output.grid
    return [(int(rows), int(cols))] * len(output.view_names)


@dataclass
class StepResult:
    step_index: int
    stamp: float
    pruner: PrunerConfig
    output: object  # vla_pruner_ros.model.PolicyOutput
    chunk: SafeChunk
    control_period: float
    wall_ms: float  # the whole runner step, conversion and safety included
    notes: list[str] = field(default_factory=list)

    # --- what the ROS messages carry, as plain values ------------------------------------
    def mask_fields(self) -> dict:
        out = self.output
        kept = np.asarray(out.kept_indices, dtype=np.int64)
        grids = view_grids(out)
        offsets = np.cumsum([0] + [rows * cols for rows, cols in grids])
        kept_per_view = [int(((kept >= offsets[i]) & (kept < offsets[i + 1])).sum()) for i in range(len(grids))]
        return {
            "step_index": self.step_index,
            "method": self.pruner.method if self.pruner.enabled else "none",
            "keep_ratio": float(self.pruner.keep_ratio if self.pruner.enabled else 1.0),
            "warmup": bool(out.warmup),
            "view_names": list(out.view_names),
            "grid_rows": [int(rows) for rows, _ in grids],
            "grid_cols": [int(cols) for _, cols in grids],
            "view_offsets": [int(v) for v in offsets[:-1]],
            "num_visual_tokens": int(out.num_visual_tokens),
            "kept_indices": [int(v) for v in kept],
            "kept_per_view": kept_per_view,
        }

    def stats_fields(self) -> dict:
        out, cfg = self.output, self.pruner
        diag = dict(out.pruner or {})
        timings = out.timings or {}
        return {
            "step_index": self.step_index,
            "method": cfg.method,
            "enabled": bool(cfg.enabled),
            "keep_ratio": float(cfg.keep_ratio),
            "prune_layer": int(cfg.prune_layer),
            "smoothing": cfg.smoothing,
            "window": int(cfg.window),
            "decay": float(cfg.decay),
            "ema_alpha": float(cfg.ema_alpha),
            "warmup": bool(out.warmup),
            "visual_tokens_before": int(out.num_visual_tokens),
            "visual_tokens_after": int(len(out.kept_indices)),
            "sequence_length_before": int(out.seq_len_before),
            "sequence_length_after": int(out.seq_len_after),
            "pool_vl": int(diag.get("pool_vl", 0)),
            "pool_act": int(diag.get("pool_act", 0)),
            "pool_dual": int(diag.get("pool_dual", 0)),
            "pool_ratio": float(diag.get("pool_ratio", 0.0)),
            "overlap_vl_act": float(diag.get("overlap_vl_act", 0.0)),
            "action_source": str(diag.get("action_source", cfg.action_source)),
            "shift": bool(diag.get("shift", False)),
            "shift_reason": str(diag.get("shift_reason", "")),
            "fallback": str(diag.get("fallback", "")),
            "image_change": float(diag.get("image_change", float("nan"))),
            "action_overlap": float(diag.get("action_overlap", float("nan"))),
            "target_ms": float(diag.get("target_ms", cfg.target_ms)),
            "predicted_ms": float(diag.get("predicted_ms", float("nan"))),
            "chosen_keep_ratio": float(diag.get("chosen_keep_ratio", float("nan"))),
            "preprocess_ms": float(timings.get("preprocess", 0.0)),
            "vision_ms": float(timings.get("vision", 0.0)),
            "llm_prefix_ms": float(timings.get("llm_prefix", 0.0)),
            "select_ms": float(timings.get("select", 0.0)),
            "llm_suffix_ms": float(timings.get("llm_suffix", 0.0)),
            "action_head_ms": float(timings.get("action_head", 0.0)),
            "total_ms": float(timings.get("total", 0.0)),
            "flops": float(out.flops["pruned"]),
            "flops_ratio": float(out.flops["ratio"]),
        }

    def trajectory_points(self) -> list[tuple[float, list[float]]]:
        """(time_from_start s, joint positions) of each chunk point, 1/control_rate apart."""
        return [((i + 1) * self.control_period, [float(v) for v in row])
                for i, row in enumerate(self.chunk.joint_positions)]

    def gripper_points(self) -> list[tuple[float, float]]:
        if self.chunk.gripper_positions is None:
            return []
        return [((i + 1) * self.control_period, float(v)) for i, v in enumerate(self.chunk.gripper_positions)]


class PolicyRunner:
    """Applies settings to the policy, runs a step, makes the result safe. Thread-safe: one
    step at a time (a lock), settings read once at the start of each step."""

    def __init__(self, policy, robot: RobotConfig):
        self.policy = policy
        self.robot = robot
        self._lock = threading.Lock()
        self._pruner: PrunerConfig | None = None
        self._instruction: str | None = None
        self.step_index = 0
        action_dim = int(getattr(policy, "action_dim", robot.action_dim))
        if action_dim < robot.action_dim:
            raise ValueError(
                f"the checkpoint predicts {action_dim} action dimensions but the robot config maps "
                f"{robot.action_dim} (joint_indices + gripper_index)"
            )
        proprio_dim = getattr(policy, "proprio_dim", None)
        if proprio_dim is not None and proprio_dim != len(robot.proprio_layout):
            raise ValueError(
                f"the checkpoint expects a proprio vector of {proprio_dim} values but the robot config's "
                f"proprio.layout has {len(robot.proprio_layout)}: {list(robot.proprio_layout)}"
            )

    @property
    def num_layers(self) -> int | None:
        return getattr(self.policy, "num_layers", None)

    def check_instruction(self, text: str) -> None:
        """ValueError when ``text`` does not fit the policy's prompt whole (the policy would cut it)."""
        builder = getattr(self.policy, "prompt_builder", None)
        if builder is None or not text or not hasattr(builder, "instruction_tokens"):
            return
        tokens = builder.instruction_tokens(text)
        if tokens > builder.max_instruction_tokens:
            raise ValueError(f"instruction is {tokens} tokens long; the policy takes at most "
                             f"{builder.max_instruction_tokens} (it would be cut, so it is refused)")

    def reset(self) -> None:
        with self._lock:
            self.policy.reset()
            self.step_index = 0

    def step(self, observation: Observation, settings: NodeSettings) -> StepResult:
        with self._lock:
            started = time.perf_counter()
            pruner = settings.pruner_config()
            if pruner != self._pruner:
                self.policy.set_pruner(pruner)
                self._pruner = pruner
            if observation.instruction != self._instruction:
                # A new instruction is a new episode: the policy clears the pruner history itself.
                self._instruction = observation.instruction
                self.step_index = 0
            # No step from a joint state the arm cannot be in (see safety): refuse before the model runs.
            check_joint_state(observation.joint_positions, self.robot,
                              velocity_limit(self.robot, settings.max_joint_velocity) * settings.control_period)
            proprio = self.robot.proprio(observation.joint_positions, observation.gripper_position)
            output = self.policy.predict(images=observation.images, proprio=proprio,
                                         instruction=observation.instruction)
            chunk = make_safe_chunk(output.actions, observation.joint_positions, self.robot,
                                    settings.control_period, settings.max_joint_velocity)
            result = StepResult(
                step_index=self.step_index,
                stamp=observation.stamp,
                pruner=pruner,
                output=output,
                chunk=chunk,
                control_period=settings.control_period,
                wall_ms=(time.perf_counter() - started) * 1e3,
                notes=list(chunk.notes),
            )
            self.step_index += 1
            return result


class StaleStepError(RuntimeError):
    """A finished step's chunk is too old to send: its inputs aged past max_input_age while it ran."""


def recheck_before_publish(result: StepResult, input_stamps: dict[str, float], latest_joints,
                           latest_joints_stamp: float | None, now: float, settings: NodeSettings,
                           robot: RobotConfig) -> StepResult:
    """The step's result with its chunk re-anchored at where the arm is *now*, or StaleStepError.

    Freshness is checked when a step starts; a slow step (a huge frame, a loaded machine) can
    finish on inputs that are no longer current while the arm kept moving. So, right before
    publishing: every input the step used must still be within ``max_input_age``, a joint state
    that recent must exist, and the chunk is velocity-limited again from that joint state (the
    first point at most one step at ``max_joint_velocity`` from it). Raises
    ``JointStateOutOfLimits`` when that joint state is outside the limits.
    """
    max_age = settings.max_input_age
    took = result.wall_ms / 1e3
    old = {name: now - stamp for name, stamp in input_stamps.items() if now - stamp > max_age}
    if old:
        ages = ", ".join(f"{name} {age:.2f} s" for name, age in sorted(old.items()))
        raise StaleStepError(f"chunk dropped: the step took {took:.2f} s and its inputs were too old to act on "
                             f"when it finished ({ages} > max_input_age {max_age:.2f} s)")
    if latest_joints is None or latest_joints_stamp is None or now - latest_joints_stamp > max_age:
        raise StaleStepError(f"chunk dropped: no joint state newer than max_input_age {max_age:.2f} s to start "
                             "it from when the step finished")
    chunk = reanchor_chunk(result.chunk, latest_joints, robot, settings.control_period, settings.max_joint_velocity)
    notes = [note for note in result.notes if note not in result.chunk.notes] + list(chunk.notes)
    return dataclasses.replace(result, chunk=chunk, notes=notes)


def format_stats_line(fields: dict) -> str:
    """One status line from PrunerStats fields (a ``stats_fields()`` dict or a message's fields)."""
    kept, total = fields["visual_tokens_after"], fields["visual_tokens_before"]
    state = "warm-up" if fields["warmup"] else ("pruned" if kept < total else "full")
    method = fields["method"] if fields["enabled"] else "none"
    return (f"step {fields['step_index']:5d}  {method:<12} keep {fields['keep_ratio']:.3f}  "
            f"tokens {kept:4d}/{total:<4d} {state:<7}  {fields['total_ms']:7.1f} ms")
