"""Premise check: does the attention a pruning score reads rank the visual tokens by how much each
one matters to the action?  (VLA-Pruner's premise: action-to-vision attention does, better than
the semantic prefill attention FastV reads, and the temporal estimate of it is good enough.)

Per policy step (unpruned observation, run on the checkpoint itself):

* **Causal importance** of visual token i: drop token i alone when entering layer K (the layer
  where pruning happens) and measure how far the action chunk moves, ||a_without_i - a||_2 over
  the normalised chunk.  One decoder pass per token; ``tokens_per_step`` tokens drawn at random
  per step when all M are too slow.
* **Scores** over the same tokens, all from the unpruned step: S_vl ("vl" rows at layer K-1),
  FastV as the paper runs it on OFT ("prefix": rows before the action rows at K-1), FastV's last
  token ("last"), the all-rows score ("all", action rows included), the current step's action-row
  attention (the latter half of the layers, what S_act would be with a perfect predictor), the
  temporal S_act that VLA-Pruner really uses (decaying window of the previous steps' action
  attention; absent on an episode's first step) and a random score (the floor).
* **Agreement**: Spearman rank correlation between each score and the causal importance, and the
  top-k recall (k = keep_ratio x the tokens measured): the share of the k most important tokens
  that are among the score's k highest (chance = k / tokens measured).
* **Direct test**: the action change when keeping only the top keep_ratio x M tokens of each
  score (one pruned pass per score), next to keeping random tokens, and when keeping the sets
  VLA-Pruner (Alg. 2 over S_vl and the temporal S_act, diversity filter) and DivPrune would keep.

`PremiseStep` holds one step's numbers; `summarize` averages them over steps and states the verdict.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..model.modeling_llama import PruneRequest
from ..pruning import DecayingWindow, dual_level_select, min_redundancy_filter

# score name -> what it is (the order of every table and plot)
SCORES = {
    "s_vl": "S_vl: 'vl' rows at layer K-1 (VLA-Pruner's semantic level)",
    "fastv": "fastv: rows before the action rows at K-1 (paper / authors' OFT FastV)",
    "fastv_last": "fastv_last: the last row before the action rows at K-1 (FastV's own)",
    "fastv_all_rows": "fastv_all_rows: every row at K-1, action rows included",
    "action_now": "current step's action-row attention, latter-half layers (oracle S_act)",
    "action_k1": "current step's action-row attention at layer K-1 (action_source=current, issue 17)",
    "s_act_temporal": "temporal S_act: decaying window of the previous steps (what VLA-Pruner uses)",
    "random": "random score (floor)",
}
GROUP_OF = {"s_vl": "vl", "fastv": "prefix", "fastv_last": "last", "fastv_all_rows": "all", "action_k1": "action"}
# token sets of the methods that are not a top-k of one score (direct test only)
SETS = {
    "vla_pruner_set": "VLA-Pruner's selection: Alg. 2 over S_vl and the temporal S_act (absent without history)",
    "divprune_set": "DivPrune's selection: Alg. 1 over all tokens",
    "vla_current_set": "VLA-Pruner with action_source=current: Alg. 2 over S_vl and action_k1",
}


@dataclass
class PremiseObservation:
    images: dict  # view -> HxWx3 uint8
    proprio: np.ndarray | None
    instruction: str
    episode: int  # steps of one episode share a temporal history


@dataclass
class PremiseStep:
    episode: int
    step: int  # index within the episode
    tokens: list[int]  # the visual tokens measured
    importance: list[float]  # causal importance of each measured token
    spearman: dict[str, float] = field(default_factory=dict)  # score -> rho (NaN when absent)
    recall: dict[str, float] = field(default_factory=dict)  # score -> top-k recall
    keep_deviation: dict[str, float] = field(default_factory=dict)  # score -> ||a_topk - a|| at keep_ratio
    chance_recall: float = 0.0
    temporal_vs_now: float = float("nan")  # Spearman(temporal S_act, current action attention) over all M


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    ra, rb = rank_average(a), rank_average(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def topk_recall(score: np.ndarray, importance: np.ndarray, k: int) -> float:
    """|top-k(score) ∩ top-k(importance)| / k (ties broken by index, as torch.topk on CPU)."""
    top_score = set(np.argsort(-np.asarray(score, dtype=float), kind="stable")[:k].tolist())
    top_true = set(np.argsort(-np.asarray(importance, dtype=float), kind="stable")[:k].tolist())
    return len(top_score & top_true) / k


class PremiseProbe:
    """Runs the measurements of one step on a loaded `Policy` (its pruner is not used)."""

    def __init__(self, policy, prune_layer: int = 3, keep_ratio: float = 0.25, tokens_per_step: int = 32,
                 window: int = 3, decay: float = 0.8, seed: int = 0):
        num_layers = policy.num_layers
        if not 1 <= prune_layer < num_layers:
            raise ValueError(f"prune_layer={prune_layer}: the checkpoint's LLM has {num_layers} layers, "
                             f"so K must be in 1..{num_layers - 1}")
        if not 0 < keep_ratio < 1:
            raise ValueError(f"keep_ratio={keep_ratio!r}: expected a number in (0, 1)")
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < 0:
            raise ValueError(f"tokens_per_step={tokens_per_step!r}: expected an int >= 0 (0 = every token)")
        self.policy, self.prune_layer, self.keep_ratio = policy, prune_layer, keep_ratio
        self.tokens_per_step, self.window, self.decay = tokens_per_step, window, decay
        self.action_layers = tuple(range(num_layers // 2, num_layers))
        self.rng = np.random.default_rng(seed)
        self.history = DecayingWindow(window, decay)
        self._episode = None

    # -- one forward pass ----------------------------------------------------------------------
    def _inputs(self, observation: PremiseObservation):
        policy = self.policy
        views = policy._check_images(observation.images)
        instruction = policy.prompt_builder.normalize_instruction(observation.instruction)
        input_ids, _ = policy.prompt_builder(instruction)
        pixel_values = policy.image_processor(views).to(device=policy.device, dtype=policy.dtype)
        proprio = policy._proprio_tensor(observation.proprio)
        model = policy.model
        visual = model.embed_visual(pixel_values)
        return model.build_inputs(visual, input_ids.to(policy.device), policy.stop_token_id, proprio)

    def _run(self, inputs_embeds, layout, keep: torch.Tensor | None, groups=(), action_layers=()):
        model = self.policy.model
        prune = None
        if keep is not None or groups:
            kept = keep if keep is not None else torch.arange(layout.num_visual)
            prune = PruneRequest(layer=self.prune_layer, select=lambda features, scores: kept,
                                 prefill_groups=tuple(groups))
        out = model.decoder(inputs_embeds, layout, prune=prune, action_layers=action_layers)
        actions = model.action_head(out.readout)[0].float()
        return actions, out

    # -- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def measure(self, observation: PremiseObservation, step: int) -> PremiseStep:
        if observation.episode != self._episode:
            self.history.reset()
            self._episode = observation.episode
        inputs_embeds, layout = self._inputs(observation)
        num_visual = layout.num_visual
        groups = tuple(GROUP_OF.values())
        reference, out = self._run(inputs_embeds, layout, None, groups=groups, action_layers=self.action_layers)
        scores = {name: out.prefill_scores[group].float().cpu().numpy() for name, group in GROUP_OF.items()}
        action_now = out.action_scores.float().cpu()
        scores["action_now"] = action_now.numpy()
        temporal = self.history.estimate()
        scores["s_act_temporal"] = temporal.numpy() if temporal is not None else None
        scores["random"] = self.rng.random(num_visual)
        self.history.update(action_now)

        if self.tokens_per_step and self.tokens_per_step < num_visual:
            tokens = np.sort(self.rng.choice(num_visual, size=self.tokens_per_step, replace=False))
        else:
            tokens = np.arange(num_visual)
        everything = torch.arange(num_visual)
        importance = np.empty(len(tokens))
        for j, token in enumerate(tokens):
            actions, _ = self._run(inputs_embeds, layout, everything[everything != int(token)])
            importance[j] = float(torch.linalg.vector_norm(actions - reference))

        budget = max(1, round(self.keep_ratio * len(tokens)))
        record = PremiseStep(episode=observation.episode, step=step, tokens=tokens.tolist(),
                             importance=importance.tolist(), chance_recall=budget / len(tokens))
        keep_budget = max(1, min(num_visual, math.floor(self.keep_ratio * num_visual + 0.5)))
        for name in SCORES:
            score = scores.get(name)
            if score is None:
                record.spearman[name] = record.recall[name] = record.keep_deviation[name] = float("nan")
                continue
            record.spearman[name] = spearman(score[tokens], importance)
            record.recall[name] = topk_recall(score[tokens], importance, budget)
            kept = torch.as_tensor(np.sort(np.argsort(-score, kind="stable")[:keep_budget]), dtype=torch.long)
            actions, _ = self._run(inputs_embeds, layout, kept)
            record.keep_deviation[name] = float(torch.linalg.vector_norm(actions - reference))
        features = inputs_embeds[0, layout.visual].float()
        sets = {"divprune_set": min_redundancy_filter(features, torch.arange(num_visual), keep_budget),
                "vla_current_set": dual_level_select(features, torch.as_tensor(scores["s_vl"]),
                                                            torch.as_tensor(scores["action_k1"]), keep_budget)}
        if temporal is not None:
            sets["vla_pruner_set"] = dual_level_select(features, torch.as_tensor(scores["s_vl"]), temporal,
                                                       keep_budget)
        for name in SETS:
            if name not in sets:
                record.keep_deviation[name] = float("nan")
                continue
            actions, _ = self._run(inputs_embeds, layout, sets[name].sort().values.cpu())
            record.keep_deviation[name] = float(torch.linalg.vector_norm(actions - reference))
        if temporal is not None:
            record.temporal_vs_now = spearman(temporal.numpy(), action_now.numpy())
        return record


def run_premise(probe: PremiseProbe, observations: Iterable[PremiseObservation],
                progress=None) -> list[PremiseStep]:
    steps, counters = [], {}
    for observation in observations:
        index = counters.get(observation.episode, 0)
        counters[observation.episode] = index + 1
        steps.append(probe.measure(observation, index))
        if progress is not None:
            progress(steps[-1])
    return steps


# ------------------------------------------------------------------------------ observations
def sim_observations(policy, episodes: int, seed: int = 0, task: str = "above", actions_per_step: int = 4,
                     max_joint_velocity: float = 1.0, make_env=None) -> Iterator[PremiseObservation]:
    """Observations of closed-loop episodes of the UNPRUNED policy in the sim (scene seeds
    seed .. seed + episodes - 1), one per policy call, stepped as eval-sim steps them.
    ``make_env()``: another task's environment (see ``training.evaluate``)."""
    from ..control.robot_config import load_robot_config
    from ..sim import SimEnv
    from ..training.evaluate import executed_actions

    robot = load_robot_config()
    env = make_env() if make_env is not None else SimEnv(seed=seed, image_size=(224, 224), task=task)
    policy.set_pruner(None)
    for episode in range(episodes):
        obs = env.reset(seed=seed + episode, task=task)
        policy.reset()
        while not env.done:
            yield PremiseObservation(images=obs["images"], proprio=obs["proprio"], instruction=obs["instruction"],
                                     episode=episode)
            out = policy.predict(images=obs["images"], proprio=obs["proprio"], instruction=obs["instruction"])
            for action in executed_actions(out.actions, obs["joints"], robot, env.control_period,
                                           max_joint_velocity, actions_per_step):
                obs, _, done, _ = env.step(action)
                if done:
                    break


def bag_observations(path: str | os.PathLike, max_steps: int | None = None) -> Iterator[PremiseObservation]:
    """The observations the policy node had at each step of a recorded bag (as `vla-pruner replay`)."""
    from ..control.robot_config import load_robot_config
    from ..replay.observations import load_timeline

    robot = load_robot_config()
    timeline = load_timeline(path, robot, max_steps=max_steps)
    for step in timeline.steps:
        o = step.observation
        yield PremiseObservation(images=o.images, proprio=robot.proprio(o.joint_positions, o.gripper_position),
                                 instruction=o.instruction, episode=step.episode)


# ------------------------------------------------------------------------------ summary
def _mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % normal interval over steps, and the count (NaNs skipped)."""
    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), 0
    half = 1.96 * data.std(ddof=1) / math.sqrt(data.size) if data.size > 1 else float("nan")
    return float(data.mean()), float(half), int(data.size)


def summarize(steps: Sequence[PremiseStep], keep_ratio: float) -> dict:
    """Per score: mean Spearman, mean top-k recall, mean keep-ratio action change; and the verdict."""
    if not steps:
        raise ValueError("no step was measured")
    rows = {}
    for name in (*SCORES, *SETS):
        rho, rho_ci, n = _mean_ci([s.spearman.get(name, float("nan")) for s in steps])
        recall, recall_ci, _ = _mean_ci([s.recall.get(name, float("nan")) for s in steps])
        deviation, deviation_ci, n_dev = _mean_ci([s.keep_deviation.get(name, float("nan")) for s in steps])
        n = max(n, n_dev)
        rows[name] = {"spearman": rho, "spearman_ci95": rho_ci, "recall": recall, "recall_ci95": recall_ci,
                      "keep_deviation": deviation, "keep_deviation_ci95": deviation_ci, "steps": n}
    chance = float(np.mean([s.chance_recall for s in steps]))
    consistency, consistency_ci, _ = _mean_ci([s.temporal_vs_now for s in steps])

    def paired_gap(a: str, b: str, metric: str = "spearman") -> tuple[float, float]:
        """Mean over steps of metric[a] - metric[b], and its 95 % half-width (paired by step)."""
        gaps = [getattr(s, metric)[a] - getattr(s, metric)[b] for s in steps
                if math.isfinite(getattr(s, metric)[a]) and math.isfinite(getattr(s, metric)[b])]
        mean, half, _ = _mean_ci(gaps)
        return mean, half

    action_vs_fastv = paired_gap("action_now", "fastv")
    temporal_vs_fastv = paired_gap("s_act_temporal", "fastv")
    action_vs_random = paired_gap("action_now", "random")
    # direct test, lower is better: FastV's action change minus the temporal estimate's
    keep_gain = paired_gap("fastv", "s_act_temporal", "keep_deviation")

    def answer(gap: tuple[float, float]) -> str:
        mean, half = gap
        if not math.isfinite(mean):
            return "unknown"
        if math.isfinite(half) and mean - half > 0:
            return "yes"
        if math.isfinite(half) and mean + half < 0:
            return "no (the other way round)"
        return "not distinguishable"

    questions = [
        ("Does the current step's action attention rank the tokens by their effect on the action "
         "(better than a random score)?", answer(action_vs_random), action_vs_random),
        ("Does it rank them better than the semantic score FastV reads (rows before the action rows)?",
         answer(action_vs_fastv), action_vs_fastv),
        ("Does the temporal estimate VLA-Pruner really uses (previous steps) beat FastV's score?",
         answer(temporal_vs_fastv), temporal_vs_fastv),
        (f"Keeping the top {keep_ratio:g} of that temporal estimate, does the action change less than "
         f"keeping FastV's top {keep_ratio:g}?", answer(keep_gain), keep_gain),
    ]
    holds = all(q[1] == "yes" for q in questions)
    return {"keep_ratio": keep_ratio, "steps": len(steps), "episodes": len({s.episode for s in steps}),
            "tokens_per_step": float(np.mean([len(s.tokens) for s in steps])), "chance_recall": chance,
            "scores": rows, "temporal_vs_now": consistency, "temporal_vs_now_ci95": consistency_ci,
            "questions": [{"question": q, "answer": a, "gap": g[0], "gap_ci95": g[1],
                           "gap_of": "action change (FastV - temporal)" if i == 3 else "Spearman rho"}
                          for i, (q, a, g) in enumerate(questions)],
            "premise_holds": holds}


def format_summary(summary: dict) -> str:
    """The one-screen answer."""
    keep = summary["keep_ratio"]
    lines = [
        f"premise check: {summary['steps']} steps of {summary['episodes']} episode(s), "
        f"{summary['tokens_per_step']:.0f} tokens measured per step, keep ratio {keep:g}",
        "",
        f"{'score':<16} {'Spearman rho':>16} {'top-k recall':>16} {'action change, keep ' + format(keep, 'g'):>24}",
        "-" * 75,
    ]
    for name, row in summary["scores"].items():
        if row["steps"] == 0:
            lines.append(f"{name:<16} {'(no step)':>16}")
            continue
        if name in SETS:
            lines.append(f"{name:<16} {'(a set)':>16} {'':>16} "
                         f"{row['keep_deviation']:>14.4f} ± {row['keep_deviation_ci95']:<7.4f}")
            continue
        lines.append(f"{name:<16} {row['spearman']:>+8.3f} ± {row['spearman_ci95']:<5.3f} "
                     f"{row['recall']:>8.3f} ± {row['recall_ci95']:<5.3f} "
                     f"{row['keep_deviation']:>14.4f} ± {row['keep_deviation_ci95']:<7.4f}")
    lines += [
        f"{'(chance recall)':<16} {'':>16} {summary['chance_recall']:>8.3f}",
        "",
        "Spearman / recall: against each token's causal importance (drop it alone at layer K, "
        "||action change||_2); ± 95% over steps.",
        "action change: ||a - a_unpruned||_2 (normalised chunk) keeping the top tokens of the score "
        "(lower is better).",
        f"temporal S_act vs the current step's action attention: Spearman {summary['temporal_vs_now']:+.3f} "
        f"± {summary['temporal_vs_now_ci95']:.3f}",
        "",
    ]
    for item in summary["questions"]:
        lines.append(f"- {item['question']}\n    {item['answer']} ({item['gap_of']} gap {item['gap']:+.3f} "
                     f"± {item['gap_ci95']:.3f}, paired over steps)")
    lines += ["", "VLA-Pruner's premise " + ("HOLDS for this model" if summary["premise_holds"] else
                                            "does NOT hold clearly for this model (see the answers above)")
              + " -- open loop, one step at a time; closed-loop success is `vla-pruner eval-sim`'s job."]
    return "\n".join(lines)


def panel_rows(summary: dict, key: str) -> list[str]:
    """The scores a plot panel shows: every measured one, except that the token sets (VLA-Pruner's,
    DivPrune's), which rank nothing, appear only in the action-change panel."""
    names = [n for n, row in summary["scores"].items() if row["steps"]]
    return names if key == "keep_deviation" else [n for n in names if n not in SETS]


def plot_premise(summary: dict, path: str | os.PathLike) -> Path:
    """Three panels per score: Spearman rho, top-k recall (chance marked), action change at the keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    panels = (("spearman", "Spearman rho vs causal importance"), ("recall", "top-k recall"),
              ("keep_deviation", f"action change keeping top {summary['keep_ratio']:g}"))

    def colour(name: str) -> str:
        return ("tab:green" if name in SETS else "tab:blue" if name in ("action_now", "s_act_temporal") else
                "tab:gray" if name == "random" else "tab:orange")

    for ax, (key, title) in zip(axes, panels):
        shown = panel_rows(summary, key)
        values = [summary["scores"][n][key] for n in shown]
        errors = [summary["scores"][n][key + "_ci95"] for n in shown]
        errors = [e if math.isfinite(e) else 0.0 for e in errors]
        ax.bar(range(len(shown)), values, yerr=errors, color=[colour(n) for n in shown], capsize=3)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].axhline(summary["chance_recall"], color="black", linestyle=":", linewidth=1, label="chance")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"premise check: {summary['steps']} steps, {summary['episodes']} episode(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_premise(steps: Sequence[PremiseStep], summary: dict, out_dir: str | os.PathLike,
                  command: str | None = None) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "premise.json", "summary": out / "premise.txt", "plot": out / "premise.png"}
    payload = {"summary": summary, "steps": [asdict(s) for s in steps]}
    if command:
        payload["command"] = command
    paths["json"].write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    text = format_summary(summary) + (f"\n\ncommand: {command}" if command else "")
    paths["summary"].write_text(text + "\n", encoding="utf-8")
    plot_premise(summary, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
