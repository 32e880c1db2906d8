"""Relevance scores (paper Eq. 2 / Eq. 4) from attention probabilities and from q/k tensors."""
import math

import pytest
import torch

from vla_pruner_ros.pruning import SequenceLayout, visual_attention_scores, visual_attention_scores_from_probs


def explicit_scores(query, key, visual, rows, causal=False):
    """Materialise every probability the slow way (repeat the kv heads) and average."""
    heads, kv_heads = query.shape[0], key.shape[0]
    key = key.repeat_interleave(heads // kv_heads, dim=0).double()
    logits = query.double() @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if causal:
        logits = logits.masked_fill(torch.ones_like(logits[0], dtype=torch.bool).triu(1), float("-inf"))
    probs = logits.softmax(-1)
    return probs[:, rows][:, :, visual].mean(dim=(0, 1))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 3, 128])
def test_scores_from_qk_match_explicit_softmax(kv_heads, causal, chunk_rows):
    generator = torch.Generator().manual_seed(kv_heads)
    query = torch.randn(4, 20, 8, generator=generator)
    key = torch.randn(kv_heads, 20, 8, generator=generator)
    rows = torch.tensor([0, 3, 4, 11, 19])
    got = visual_attention_scores(query, key, slice(2, 9), rows, causal=causal, chunk_rows=chunk_rows)
    assert got.dtype == torch.float32 and got.shape == (7,)
    assert torch.allclose(got.double(), explicit_scores(query, key, slice(2, 9), rows, causal), atol=1e-6)


def test_scores_accept_batch_one_noncontiguous_and_low_precision():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 12, 4, 16, generator=generator).transpose(1, 2)  # (1, heads, S, hd), a view
    key = torch.randn(1, 12, 4, 16, generator=generator).transpose(1, 2)
    expected = explicit_scores(query[0], key[0], slice(1, 6), torch.arange(12))
    got = visual_attention_scores(query.bfloat16(), key.bfloat16(), slice(1, 6), slice(None))
    assert torch.allclose(got.double(), expected, atol=2e-2)
    assert torch.allclose(visual_attention_scores(query, key, slice(1, 6), slice(None)).double(), expected, atol=1e-6)


def test_scores_from_probs_average_heads_and_rows():
    probs = torch.zeros(2, 3, 5)
    probs[0, 0, 1], probs[1, 0, 2] = 1.0, 1.0  # row 0: head 0 -> key 1, head 1 -> key 2
    probs[0, 2, 1], probs[1, 2, 1] = 0.5, 0.5  # row 2: half on key 1 in both heads
    got = visual_attention_scores_from_probs(probs.unsqueeze(0), slice(1, 4), [0, 2], chunk_rows=1)
    # key 1: (1 + 0 + .5 + .5) / 4, key 2: 1 / 4, key 3: 0
    assert torch.allclose(got, torch.tensor([0.5, 0.25, 0.0]))


def test_probs_and_qk_paths_agree():
    generator = torch.Generator().manual_seed(3)
    query, key = torch.randn(2, 10, 4, generator=generator), torch.randn(2, 10, 4, generator=generator)
    probs = (query @ key.transpose(-1, -2) / 2.0).softmax(-1)
    rows = [1, 5, 6]
    assert torch.allclose(visual_attention_scores(query, key, slice(1, 8), rows),
                          visual_attention_scores_from_probs(probs, slice(1, 8), rows), atol=1e-6)


def test_layout_rows_of_each_group():
    # BOS | 4 visual | proprio | 3 prompt (last is '▁') | 4 placeholders | </s>  -> 14 rows
    layout = SequenceLayout(num_visual=4, num_prompt=3, num_action=4, has_proprio=True)
    assert layout.length == 14 and layout.visual == slice(1, 5)
    assert layout.rows("all").tolist() == list(range(14))
    assert layout.rows("text").tolist() == [6, 7, 8]
    assert layout.rows("action").tolist() == [8, 9, 10, 11]  # '▁' + first 3 placeholders
    assert layout.rows("vl").tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 13]  # not the action rows, not row 12
    assert layout.rows("prefix").tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # everything before the action rows
    assert layout.rows("last").tolist() == [7]  # the prompt row before '▁'
    no_proprio = SequenceLayout(num_visual=4, num_prompt=3, num_action=4, has_proprio=False)
    assert no_proprio.rows("text").tolist() == [5, 6, 7] and no_proprio.length == 13


def qk_scores(query_shape, key_shape, visual, rows, **options):
    return visual_attention_scores(torch.randn(query_shape), torch.randn(key_shape), visual, rows, **options)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SequenceLayout(0, 3, 4), "num_visual=0"),
        (lambda: SequenceLayout(4, 3, 4).rows("proprio"), "group='proprio'"),
        (lambda: qk_scores((3, 5, 4), (2, 5, 4), slice(0, 2), [0]), "kv_heads"),
        (lambda: qk_scores((2, 5, 4), (2, 5, 4), slice(0, 2), [5]), r"\[0, 5\)"),
        (lambda: qk_scores((2, 5, 4), (2, 5, 4), slice(3, 3), [0]), "no key"),
        (lambda: qk_scores((2, 5, 4), (2, 5, 4), slice(0, 4, 2), [0]), "contiguous"),
        (lambda: qk_scores((2, 4, 4), (2, 5, 4), slice(0, 2), [0], causal=True), "S_q == S_k"),
        (lambda: qk_scores((2, 2, 5, 4), (2, 2, 5, 4), slice(0, 2), [0]), "batch size 2"),
        (lambda: visual_attention_scores_from_probs(torch.rand(5, 5), slice(0, 2), [0]), "expected 3 dims"),
    ],
)
def test_scores_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
