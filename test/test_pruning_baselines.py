"""The three FastV variants read different query rows, and on a hand-made attention pattern each
keeps the tokens its definition says: `fastv` (rows before the action rows, the paper's and the
authors' OFT definition), `fastv_last` (FastV's last token) and `fastv_all_rows` (every row, the
action placeholders included: an action-aware, OFT-specific score)."""
import pytest
import torch

from vla_pruner_ros.pruning import PrunerConfig, SequenceLayout, make_pruner, visual_attention_scores_from_probs

# BOS 0 | visual 1..8 | proprio 9 | prompt 10, 11, 12 ('▁') | placeholders 13..16 | </s> 17
LAYOUT = SequenceLayout(num_visual=8, num_prompt=3, num_action=4, has_proprio=True)
PREFIX_FAVOURITES = [2, 3]  # what the rows before the action rows attend to
LAST_FAVOURITES = [0, 1]  # what the last prompt row before '▁' attends to
ACTION_FAVOURITES = [6, 7]  # what the action rows (and the rest of the tail) attend to


def hand_made_attention() -> torch.Tensor:
    """(1 head, 18, 18) attention probabilities, every row a distribution over all keys."""
    length = LAYOUT.length
    probs = torch.full((length, length), 0.0)
    visual_start = LAYOUT.visual.start

    def row(r, favourites, mass):
        probs[r] = (1.0 - 2 * mass) / (length - 2)
        for v in favourites:
            probs[r, visual_start + v] = mass

    last = int(LAYOUT.rows("last")[0])
    for r in range(length):
        if r == last:
            row(r, LAST_FAVOURITES, 0.45)
        elif r < LAYOUT.action_rows.start:
            row(r, PREFIX_FAVOURITES, 0.20)
        else:  # the action rows, the last placeholder and </s>
            row(r, ACTION_FAVOURITES, 0.45)
    assert torch.allclose(probs.sum(-1), torch.ones(length))
    return probs[None]


def kept_by(method: str, probs: torch.Tensor) -> list[int]:
    pruner = make_pruner(PrunerConfig(method=method, keep_ratio=0.25))  # 2 of 8
    plan = pruner.plan(num_visual_tokens=LAYOUT.num_visual, num_layers=6)
    assert plan.prune and plan.score_layers_vl == (2,)  # scored at layer K-1
    scores = {g: visual_attention_scores_from_probs(probs, LAYOUT.visual, LAYOUT.rows(g)) for g in plan.prefill_groups}
    return pruner.select(prefill_scores=scores).kept.tolist()


@pytest.mark.parametrize("method, expected", [
    ("fastv", PREFIX_FAVOURITES),
    ("fastv_last", LAST_FAVOURITES),
    ("fastv_all_rows", ACTION_FAVOURITES),
    ("prefill_only", PREFIX_FAVOURITES),  # S_vl = the prefix rows + </s>: one row more, same choice here
])
def test_each_fastv_variant_keeps_what_its_rows_attend_to(method, expected):
    assert kept_by(method, hand_made_attention()) == expected


def test_the_variants_read_disjoint_evidence():
    """fastv never reads an action row; fastv_all_rows does; fastv_last reads exactly one row."""
    action_rows = set(LAYOUT.rows("action").tolist())
    assert not action_rows & set(LAYOUT.rows("prefix").tolist())
    assert action_rows <= set(LAYOUT.rows("all").tolist())
    assert LAYOUT.rows("last").tolist() == [LAYOUT.action_rows.start - 1]
    # the action rows alone decide fastv_all_rows here: make them uniform and it agrees with fastv
    probs = hand_made_attention()
    probs[0, LAYOUT.action_rows.start:] = 1.0 / LAYOUT.length
    assert kept_by("fastv_all_rows", probs) == PREFIX_FAVOURITES


def test_config_validates_names_without_importing_the_methods_first():
    """config.py reads the registry module; methods.py registers into it (no import cycle)."""
    import importlib
    import subprocess
    import sys

    code = ("import vla_pruner_ros.pruning.registry as r, vla_pruner_ros.pruning.config as c, "
            "vla_pruner_ros.pruning.methods as m; "
            "assert 'fastv_last' in r.method_names(); c.PrunerConfig(method='fastv_all_rows'); "
            "import inspect; assert 'from .methods' not in inspect.getsource(c)")
    subprocess.run([sys.executable, "-c", code], check=True)
    registry = importlib.import_module("vla_pruner_ros.pruning.registry")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("fastv")(type("Impostor", (), {}))


def test_variants_through_the_model_keep_the_top_of_their_rows(tiny_checkpoint):
    """On the tiny checkpoint: each variant's kept tokens are the top-M~ of its own query rows'
    attention at layer K-1, as the decoder computes it, and the three variants keep different sets."""
    import numpy as np

    from vla_pruner_ros.evaluation.premise import PremiseObservation, PremiseProbe
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.pruning import topk_indices

    policy = load_policy(tiny_checkpoint, device="cpu", dtype=torch.float32)
    rng = np.random.default_rng(5)
    images = {view: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for view in policy.view_names}
    proprio = rng.uniform(-0.5, 0.5, policy.proprio_dim)
    observation = PremiseObservation(images=images, proprio=proprio, instruction="pick up the red cube", episode=0)
    probe = PremiseProbe(policy, prune_layer=3)
    with torch.inference_mode():
        inputs_embeds, layout = probe._inputs(observation)
        _, out = probe._run(inputs_embeds, layout, None, groups=("prefix", "last", "all"))
    budget = PrunerConfig(keep_ratio=0.25).budget(layout.num_visual)
    kept = {}
    for method, group in (("fastv", "prefix"), ("fastv_last", "last"), ("fastv_all_rows", "all")):
        policy.set_pruner(PrunerConfig(method=method, keep_ratio=0.25, prune_layer=3))
        policy.reset()
        result = policy.predict(images, proprio, "pick up the red cube")
        assert result.pruned and len(result.kept_indices) == budget
        expected = topk_indices(out.prefill_scores[group], budget).tolist()
        assert result.kept_indices.tolist() == expected, method
        kept[method] = set(result.kept_indices.tolist())
    policy.set_pruner(None)
    assert kept["fastv"] != kept["fastv_last"] and kept["fastv"] != kept["fastv_all_rows"]
