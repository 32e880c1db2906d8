"""Temporal S_act estimates: decaying window (paper Eq. 7) and EMA (Eq. 6)."""
import pytest
import torch

from vla_pruner_ros.pruning import EMA, DecayingWindow


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# observations that already sum to 1, so normalisation leaves them as they are
S1, S2, S3, S4 = t(0.5, 0.5, 0.0, 0.0), t(0.0, 0.25, 0.75, 0.0), t(0.1, 0.2, 0.3, 0.4), t(0.0, 0.0, 0.0, 1.0)


def test_window_eq7_hand_values_and_forgetting():
    window = DecayingWindow(window=3, decay=0.8)
    assert window.estimate() is None and len(window) == 0 and not window.ready
    window.update(S1)
    assert torch.allclose(window.estimate(), 0.8 * S1)
    window.update(S2)
    assert torch.allclose(window.estimate(), 0.8 * S2 + 0.64 * S1)
    window.update(S3)
    assert window.ready and len(window) == 3
    # Eq. 7 with w = 3: newest gets γ^1, oldest γ^3
    expected = t(0.8 * 0.1 + 0.64 * 0.0 + 0.512 * 0.5,
                 0.8 * 0.2 + 0.64 * 0.25 + 0.512 * 0.5,
                 0.8 * 0.3 + 0.64 * 0.75 + 0.512 * 0.0,
                 0.8 * 0.4)
    assert torch.allclose(window.estimate(), expected)
    window.update(S4)  # S1 leaves the window
    assert len(window) == 3
    assert torch.allclose(window.estimate(), 0.8 * S4 + 0.64 * S3 + 0.512 * S2)


def test_window_forgets_a_spike_after_w_steps():
    window = DecayingWindow(window=2, decay=0.5)
    spike = t(1.0, 0.0, 0.0)
    window.update(spike)
    for _ in range(2):
        window.update(t(0.0, 1.0, 1.0))
    assert window.estimate()[0] == 0.0  # the spike is 3 steps old, the window holds 2
    assert torch.allclose(window.estimate(), t(0.0, 0.375, 0.375))  # 0.5 * 0.5 + 0.25 * 0.5


def test_window_decay_edge_cases():
    window = DecayingWindow(window=3, decay=1.0)
    for obs in (S1, S2, S3, S4):
        window.update(obs)
    assert torch.allclose(window.estimate(), S2 + S3 + S4)  # plain sum of the last w
    zero_decay = DecayingWindow(window=2, decay=0.0)
    zero_decay.update(S1)
    assert torch.equal(zero_decay.estimate(), torch.zeros(4))  # Eq. 7: every γ^i, i >= 1, is 0


def test_ema_eq6_hand_values():
    ema = EMA(alpha=0.3)
    assert ema.estimate() is None
    ema.update(S1)
    assert torch.allclose(ema.estimate(), S1)  # initial value: the first observation
    ema.update(S2)
    assert torch.allclose(ema.estimate(), 0.7 * S1 + 0.3 * S2)
    ema.update(S3)
    assert torch.allclose(ema.estimate(), 0.7 * (0.7 * S1 + 0.3 * S2) + 0.3 * S3)
    assert len(ema) == 3


def test_ema_alpha_extremes_and_readiness():
    frozen, follower = EMA(alpha=0.0, min_observations=2), EMA(alpha=1.0, min_observations=2)
    for obs in (S1, S2):
        assert not frozen.ready
        frozen.update(obs)
        follower.update(obs)
    assert frozen.ready
    assert torch.allclose(frozen.estimate(), S1)
    assert torch.allclose(follower.estimate(), S2)


def test_observations_are_normalised_over_visual_tokens():
    window = DecayingWindow(window=1, decay=1.0)
    window.update(t(1.0, 3.0, 0.0, 4.0))
    assert torch.allclose(window.estimate(), t(0.125, 0.375, 0.0, 0.5))
    window.update(torch.zeros(4))  # no mass at all: stays zero instead of dividing by 0
    assert torch.equal(window.estimate(), torch.zeros(4))
    ema = EMA(alpha=0.5)
    ema.update(t(2.0, 2.0))
    assert torch.allclose(ema.estimate(), t(0.5, 0.5))


def test_unobserved_zero_policy():
    window = DecayingWindow(window=2, decay=1.0, unobserved="zero")
    window.update(t(0.25, 0.25, 0.25, 0.25))
    kept = torch.tensor([True, True, False, False])
    window.update(t(1.0, 3.0, float("nan"), 99.0), kept)  # unobserved entries may hold anything
    # newest observation: observed tokens renormalised to 1, pruned tokens 0
    assert torch.allclose(window.estimate(), t(0.25, 0.75, 0.0, 0.0) + 0.25)
    ema = EMA(alpha=0.5, unobserved="zero")
    ema.update(t(0.25, 0.25, 0.25, 0.25))
    ema.update(t(1.0, 3.0, 0.0, 0.0), kept)
    assert torch.allclose(ema.estimate(), t(0.25, 0.5, 0.125, 0.125))


def test_unobserved_carry_policy_window():
    window = DecayingWindow(window=3, decay=0.5, unobserved="carry")
    window.update(t(0.1, 0.2, 0.3, 0.4))
    window.update(t(0.4, 0.3, 0.2, 0.1))
    # weighted history mean: (0.5 * newest + 0.25 * older) / 0.75
    mean = (0.5 * t(0.4, 0.3, 0.2, 0.1) + 0.25 * t(0.1, 0.2, 0.3, 0.4)) / 0.75
    kept = torch.tensor([True, False, True, False])
    window.update(t(3.0, 0.0, 1.0, 0.0), kept)
    carried = mean[1] + mean[3]
    stored = t(0.75 * (1 - carried), mean[1], 0.25 * (1 - carried), mean[3])
    assert torch.allclose(stored.sum(), torch.tensor(1.0))
    expected = 0.5 * stored + 0.25 * t(0.4, 0.3, 0.2, 0.1) + 0.125 * t(0.1, 0.2, 0.3, 0.4)
    assert torch.allclose(window.estimate(), expected)


def test_unobserved_carry_policy_ema_keeps_pruned_estimates():
    ema = EMA(alpha=0.5, unobserved="carry")
    ema.update(t(0.1, 0.2, 0.3, 0.4))
    before = ema.estimate()
    kept = torch.tensor([True, True, False, False])
    ema.update(t(1.0, 1.0, 0.0, 0.0), kept)
    after = ema.estimate()
    assert torch.allclose(after[2:], before[2:])  # pruned tokens keep their estimate exactly
    # observed tokens share the remaining mass 1 - 0.7 = 0.3 equally: 0.15 each
    assert torch.allclose(after[:2], 0.5 * before[:2] + 0.5 * 0.15)
    assert torch.allclose(after.sum(), torch.tensor(1.0))


def test_carry_without_history_behaves_like_zero():
    carry, zero = EMA(unobserved="carry"), EMA(unobserved="zero")
    kept = torch.tensor([True, False, True])
    for history in (carry, zero):
        history.update(t(1.0, 5.0, 3.0), kept)
    assert torch.allclose(carry.estimate(), zero.estimate())
    assert torch.allclose(carry.estimate(), t(0.25, 0.0, 0.75))


@pytest.mark.parametrize("make", [lambda: DecayingWindow(3, 0.8), lambda: EMA(0.5, min_observations=3)])
def test_reset_forgets_and_allows_a_new_token_count(make):
    history = make()
    for _ in range(3):
        history.update(torch.rand(8))
    assert history.ready
    with pytest.raises(ValueError, match="M=5 tokens but this history holds M=8"):
        history.update(torch.rand(5))
    history.reset()
    assert history.estimate() is None and len(history) == 0 and not history.ready
    history.update(torch.rand(5))
    assert history.estimate().shape == (5,)


def test_window_memory_is_a_fixed_ring_buffer():
    window = DecayingWindow(window=3, decay=0.8)
    window.update(torch.rand(512))
    buffer = window.buffer
    pointer = buffer.data_ptr()
    for _ in range(100):
        window.update(torch.rand(512))
    assert window.buffer is buffer and buffer.data_ptr() == pointer
    assert buffer.shape == (3, 512) and len(window) == 3
    ema = EMA(0.5)
    for _ in range(100):
        ema.update(torch.rand(512))
    assert ema.state.shape == (512,)


def test_history_works_inside_and_outside_inference_mode():
    window, ema = DecayingWindow(2, 0.8), EMA(0.5)
    with torch.inference_mode():
        window.update(torch.rand(4))
        ema.update(torch.rand(4))
    window.update(torch.rand(4))
    ema.update(torch.rand(4))
    assert window.estimate().shape == ema.estimate().shape == (4,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DecayingWindow(window=0), "window=0"),
        (lambda: DecayingWindow(window=2.0), "window=2.0"),
        (lambda: DecayingWindow(decay=1.5), "decay=1.5"),
        (lambda: DecayingWindow(decay=-0.1), "decay=-0.1"),
        (lambda: DecayingWindow(unobserved="keep"), "unobserved='keep'"),
        (lambda: EMA(alpha=2.0), "alpha=2.0"),
        (lambda: EMA(min_observations=0), "min_observations=0"),
        (lambda: EMA(unobserved=None), "unobserved=None"),
    ],
)
def test_constructor_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "scores, mask, message",
    [
        (torch.rand(2, 3), None, "1-D"),
        (torch.tensor([]), None, "1-D"),
        (t(0.1, -0.2, 0.3), None, ">= 0"),
        (t(0.1, float("inf"), 0.3), None, "finite"),
        (t(0.1, 0.2, 0.3), torch.tensor([1, 0, 1]), "bool tensor of shape"),
        (t(0.1, 0.2, 0.3), torch.tensor([True, False]), "bool tensor of shape"),
    ],
)
def test_update_validation(scores, mask, message):
    with pytest.raises(ValueError, match=message):
        DecayingWindow().update(scores, mask)
