"""The benchmark's parts: interleaved timing, FLOP counting, the random-weight model, settings."""
import math

import pytest
import torch
import torch.nn.functional as F

from vla_pruner_ros.benchmarking import (
    BenchSettings,
    count_flops,
    llama_layer_flops,
    make_observations,
    random_policy,
    run_interleaved,
    summarize,
)
from vla_pruner_ros.benchmarking.flops import breakdown_from_counts
from vla_pruner_ros.benchmarking.timing import rotated
from vla_pruner_ros.pruning import PrunerConfig


# ------------------------------------------------------------------------------------- timing
def test_summarize_median_quartiles_and_extremes():
    spread = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (spread.median, spread.q1, spread.q3, spread.min, spread.max, spread.count) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert spread.iqr == 2.0 and spread.as_dict()["iqr"] == 2.0
    assert summarize([7.0]).median == 7.0 and summarize([7.0]).iqr == 0.0
    with pytest.raises(ValueError, match="samples is empty"):
        summarize([])


def test_interleaving_rotates_the_start_and_times_every_call():
    order = []
    calls = {name: (lambda repetition, name=name: order.append((repetition, name)) or name) for name in "abc"}
    samples = run_interleaved(calls, repetitions=4)
    assert [name for _, name in order] == list("abc" "bca" "cab" "abc")
    assert [rep for rep, _ in order] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert {name: len(s) for name, s in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(s.ms >= 0 and s.result == name for name, ss in samples.items() for s in ss)
    assert rotated(["a", "b"], 5) == ["b", "a"]


def test_interleaving_synchronises_around_every_call():
    events = []
    calls = {"x": lambda r: events.append("call"), "y": lambda r: events.append("call")}
    run_interleaved(calls, repetitions=2, synchronize=lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"] * 4


def test_interleaving_rejects_bad_arguments():
    with pytest.raises(ValueError, match="calls is empty"):
        run_interleaved({}, 3)
    with pytest.raises(ValueError, match="repetitions=0"):
        run_interleaved({"a": lambda r: None}, 0)


# -------------------------------------------------------------------------------------- FLOPs
class TinyAttention(torch.nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.proj = torch.nn.Linear(width, width, bias=False)

    def forward(self, x):  # x: (1, heads, rows, head_dim)
        return F.scaled_dot_product_attention(self.proj(x), x, x)


def test_cpu_sdpa_is_counted():
    model = TinyAttention()
    x = torch.randn(1, 4, 10, 32)
    flops, _ = count_flops(model, lambda: model(x))
    linear = 2 * 4 * 10 * 32 * 32
    attention = 2 * 4 * 10 * 10 * (32 + 32)  # QK^T and PV
    assert flops.total == linear + attention


def test_breakdown_sorts_module_counts_into_parts():
    counts = {
        "Global": {"aten.mm": 1000, "aten.addmm": 300, "aten.bmm": 40},
        "M.vision_backbone": {"aten.addmm": 200},
        "M.projector": {"aten.addmm": 50},
        "M.language_model.model": {"aten.mm": 1000, "aten.bmm": 40},
        "M.language_model.model.layers.0": {"aten.mm": 500, "aten.bmm": 40},
        "M.language_model.model.layers.0.mlp": {"aten.mm": 300},  # a child: not counted twice
        "M.language_model.model.layers.1": {"aten.mm": 480},
        "M.action_head": {"aten.addmm": 50},
    }
    parts = breakdown_from_counts(counts, "M")
    assert (parts.total, parts.vision, parts.decoder_layers, parts.score_capture, parts.selection, parts.heads) == (
        1340, 250, 980, 40, 20, 50)
    assert parts.llm == 1040


def test_llama_layer_flops_by_hand():
    # n=10 rows, d=8, m=16, 2 heads of 4 (1 kv head): q,o 2*10*8*8 each; k,v 2*10*8*4 each;
    # QK^T and PV 2*2*10*10*4 each; mlp 3 * 2*10*8*16
    expected = 2 * 1280 + 2 * 640 + 2 * 1600 + 3 * 2560
    assert llama_layer_flops(10, 8, 16, num_heads=2, num_kv_heads=1, head_dim=4) == expected


# ---------------------------------------------------------------------------- random model
@pytest.fixture(scope="module")
def tiny_policy():
    return random_policy("tiny", seed=3)


def test_random_policy_is_complete_finite_and_seeded(tiny_policy):
    params = dict(tiny_policy.model.named_parameters())
    assert not any(p.is_meta for p in params.values())
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    again = random_policy("tiny", seed=3).model.state_dict()
    other = random_policy("tiny", seed=4).model.state_dict()
    name = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(again[name], params[name]) and not torch.equal(other[name], params[name])
    # fan-in scaling keeps a projection's output at the input's scale
    assert params[name].std().item() == pytest.approx(1 / math.sqrt(64), rel=0.1)


def test_random_policy_predicts(tiny_policy):
    observation = make_observations(tiny_policy, 1, seed=0)[0]
    out = tiny_policy.predict(observation.images, observation.proprio, observation.instruction)
    assert out.actions.shape == (8, 7) and torch.isfinite(torch.as_tensor(out.actions)).all()


def test_random_policy_honours_the_dtype_and_refuses_oft7b_off_cuda():
    policy = random_policy("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="oft-7b.*--device cuda"):
        random_policy("oft-7b", device="cpu")
    with pytest.raises(ValueError, match="preset='huge'"):
        random_policy("huge")


def test_gemm_shapes_are_the_models_linear_layers(tiny_policy):
    from vla_pruner_ros.benchmarking.flops import llama_layer_flops
    from vla_pruner_ros.benchmarking.peak import model_gemm_shapes

    shapes = {s.where: s for s in model_gemm_shapes(tiny_policy, rows=601)}
    text = tiny_policy.config.text_config
    # q/k/v, o, gate/up, down at 601 rows = one layer's FLOPs without the attention matmuls
    llm = sum(shapes[w].flops for w in ("llm q/k/v", "llm o", "llm gate/up", "llm down"))
    attention = 2 * 2 * text.num_attention_heads * 601 * 601 * (text.hidden_size // text.num_attention_heads)
    assert llm == llama_layer_flops(601, text.hidden_size, text.intermediate_size, text.num_attention_heads,
                                    text.num_attention_heads, text.hidden_size // text.num_attention_heads) - attention
    tower = tiny_policy.model.vision_backbone.featurizer
    qkv = shapes["dinov2 qkv"]
    assert (qkv.rows, qkv.inner, qkv.cols) == (2 * (256 + tower.num_prefix_tokens), 64, 3 * 64)
    assert shapes["projector fc1"].inner == tiny_policy.model.projector.fc1.in_features


def test_gemm_peak_is_the_best_shape_rate():
    from vla_pruner_ros.benchmarking.peak import GemmShape, measure_gemm_peak

    small, large = GemmShape(8, 8, 8, "small"), GemmShape(128, 256, 256, "large")
    peak = measure_gemm_peak([small, large], torch.float32, seconds_per_shape=0.02)
    rates = {s["where"]: s["gflops"] for s in peak.shapes}
    assert peak.gflops == max(rates.values()) and all(r > 0 for r in rates.values())
    assert peak.best.endswith(f"({max(rates, key=rates.get)})") and peak.dtype == "float32"
    with pytest.raises(ValueError, match="shapes is empty"):
        measure_gemm_peak([], torch.float32)


def test_forks_share_weights_but_not_pruner_state(tiny_policy):
    observation = make_observations(tiny_policy, 1)[0]
    config = PrunerConfig(method="vla_pruner", keep_ratio=0.25, window=2)
    first, second = tiny_policy.fork(config), tiny_policy.fork(config)
    assert first.model is tiny_policy.model and second.model is tiny_policy.model
    step = lambda policy: policy.predict(observation.images, observation.proprio, observation.instruction)
    assert [step(first).warmup for _ in range(3)] == [True, True, False]
    assert step(second).warmup  # its own history: still warming up
    assert tiny_policy.pruner_config is None and step(tiny_policy).pruned is False


# ---------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "BenchSettings.steps=0"),
    ({"warmup": -1}, "BenchSettings.warmup=-1"),
    ({"methods": ("none", "fastest")}, "unknown \\['fastest'\\]"),
    ({"methods": ()}, "methods is empty"),
    ({"keep_ratios": (0.5, 1.0)}, "keep_ratios=\\(0.5, 1.0\\)"),
    ({"keep_ratios": (0.5, 0.5)}, "ratios repeat"),
    ({"dtype": "int8"}, "BenchSettings.dtype='int8'"),
    ({"threads": 0}, "BenchSettings.threads=0"),
    ({"peak_seconds": 0}, "BenchSettings.peak_seconds=0"),
])
def test_settings_name_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        BenchSettings(**changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_settings_refuse_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="CUDA is not available"):
        BenchSettings(device="cuda")


# ------------------------------------------------------------- reporting without stage timings
def test_rows_without_stage_timings_as_on_cuda():
    """On CUDA the policy times only the whole step; the report must still hold together."""
    from types import SimpleNamespace

    from vla_pruner_ros.benchmarking.flops import FlopBreakdown
    from vla_pruner_ros.benchmarking.report import format_report
    from vla_pruner_ros.benchmarking.suite import Configuration, _add_relative_numbers, _row, evaluate_targets
    from vla_pruner_ros.benchmarking.timing import Sample

    text = SimpleNamespace(num_hidden_layers=4, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                           num_key_value_heads=None, head_dim=None)
    base = SimpleNamespace(config=SimpleNamespace(text_config=text), num_layers=4)

    def output(pruned, select_ms):
        return SimpleNamespace(timings={"total": 1.0}, pruned=pruned, kept_indices=list(range(5 if pruned else 10)),
                               num_visual_tokens=10, seq_len_before=20, seq_len_after=15 if pruned else 20,
                               prune_layer=2 if pruned else None,
                               pruner={"select_ms": select_ms, "pool_dual": 7} if pruned else {})

    def config(name, method, keep, ms, total_flops, pruned):
        c = Configuration(name, method, keep, policy=None)
        c.extra = {"flops": FlopBreakdown(total_flops, 10, total_flops - 10, 0, 0, 0),
                   "flops_output": output(pruned, 0.5), "score_capture_ms": None}
        return c, [Sample(ms, output(pruned, 0.5)) for _ in range(3)]

    rows = [_row(*config("none", "none", None, 10.0, 100, False), base),
            _row(*config("fastv@0.5", "fastv", 0.5, 6.0, 60, True), base),
            _row(*config("vla_pruner@0.5", "vla_pruner", 0.5, 6.0, 60, True), base)]
    _add_relative_numbers(rows)
    pruned = rows[2]
    assert pruned["llm_ms"] is None and pruned["llm_speedup"] is None and pruned["stages_ms"] == {}
    assert pruned["select_ms"] == 0.5  # the pruner's own selection time stands in for the stage
    assert pruned["speedup"] == pytest.approx(10 / 6) and pruned["efficiency"] == pytest.approx((10 / 6) / (100 / 60))
    result = {"rows": rows, "targets": evaluate_targets(rows), "settings": {"steps": 3, "warmup": 1},
              "machine": {"cpu": "x", "usable_cores": 1, "torch": "t", "torch_threads": 1, "device": "cuda:0",
                          "dtype": "bfloat16", "gpu": "some GPU", "load_average_before": None,
                          "load_average_after": None},
              "model": {"checkpoint": None, "preset": "p", "llm_layers": 4, "hidden_size": 8, "intermediate_size": 16,
                        "attention_heads": 2, "views": 2, "num_visual": 10, "seq_len": 20, "chunk_length": 1,
                        "action_dim": 1, "parameters": 1000, "weights": "random"}}
    text_out = format_report(result)
    assert "vla_pruner@0.5" in text_out and "some GPU" in text_out


# ------------------------------------------------------- speed work: same numbers, fewer copies
@pytest.mark.parametrize("causal", [False, True])
def test_scores_over_a_row_slice_equal_scores_over_the_same_row_indices(causal):
    """The decoder passes contiguous query groups as slices (views, no host sync); the result must
    not depend on how the rows were given, nor on the chunking."""
    from vla_pruner_ros.pruning.scores import visual_attention_scores

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 20, 8, 16, generator=generator).transpose(1, 2)  # (1, heads, S, d), model strides
    key = torch.randn(1, 20, 4, 16, generator=generator).transpose(1, 2)  # grouped-query: 4 kv heads
    for rows in (slice(5, 17), slice(0, 20), slice(19, 20)):
        as_index = torch.arange(20)[rows]
        for chunk_rows in (1, 3, 64):
            by_slice = visual_attention_scores(query, key, slice(2, 9), rows, causal=causal, chunk_rows=chunk_rows)
            by_index = visual_attention_scores(query, key, slice(2, 9), as_index, causal=causal, chunk_rows=64)
            torch.testing.assert_close(by_slice, by_index, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="non-empty"):
        visual_attention_scores(query, key, slice(2, 9), slice(7, 7))


def test_current_rows_after_dropping_visual_tokens():
    from vla_pruner_ros.model.modeling_llama import current_rows
    from vla_pruner_ros.pruning.scores import SequenceLayout

    layout = SequenceLayout(num_visual=10, num_prompt=4, num_action=6)  # rows: BOS, 10 visual, proprio, ...
    action = layout.rows("action")
    assert current_rows(layout, action, 10) == slice(int(action[0]), int(action[-1]) + 1)
    assert current_rows(layout, action, 3) == slice(int(action[0]) - 7, int(action[-1]) - 6)
    vl = current_rows(layout, layout.rows("vl"), 10)  # not contiguous: stays an index tensor
    assert isinstance(vl, torch.Tensor) and torch.equal(vl, layout.rows("vl"))
    with pytest.raises(RuntimeError, match="7 of the visual rows were dropped"):
        current_rows(layout, layout.rows("vl"), 3)
