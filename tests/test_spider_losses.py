"""spider/losses.py on hand-computed cases (expected values derived here from the spec)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mspider_jax.spider import losses


def _lse(values):
    return math.log(sum(math.exp(v) for v in values))


_JITTED = {}


def _call(loss, scores, labels, mask=None, **kw):
    """The loss of one task, jit-compiled (one compile per loss and shape, as in training)."""
    scores = np.asarray([scores], np.float32)
    labels = np.asarray([labels], np.float32)
    mask = np.ones(scores.shape, bool) if mask is None else np.asarray([mask])
    key = (loss, tuple(sorted(kw.items())))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda s, r, m: loss(s, r, m, **kw))
    return float(_JITTED[key](scores, labels, mask)[0])


def test_plackett_luce_hand_computed_permutation():
    # Labels [3, 1, 2]: order 0, 2, 1. Chain of 2 softmax steps, divided by M - 1 = 2.
    s = [1.0, 2.0, 0.0]
    expected = ((-s[0] + _lse([s[0], s[1], s[2]])) + (-s[2] + _lse([s[2], s[1]]))) / 2
    assert _call(losses.plackett_luce, s, [3, 1, 2]) == pytest.approx(expected, rel=1e-6)


def _allrank_listmle(scores, labels):
    """allRank ListMLE (spec §5.2) in float64, on labels without ties."""
    order = np.argsort(-np.asarray(labels), kind="stable")
    s = np.asarray(scores, np.float64)[order]
    s = s - s.max()
    tails = np.log(np.cumsum(np.exp(s)[::-1])[::-1])
    return float(np.sum(tails - s))


def test_plackett_luce_equals_listmle_over_m_minus_1_on_permutations(rng):
    for _ in range(5):
        m = int(rng.integers(3, 9))
        scores = rng.normal(size=m) * 3
        labels = rng.permutation(m)
        expected = _allrank_listmle(scores, labels) / (m - 1)
        assert _call(losses.plackett_luce, scores, labels) == pytest.approx(expected, rel=1e-5)


def test_plackett_luce_ties_are_index_based():
    # Labels [2, 2, 1]: the stable sort places model 0 before model 1; once placed, a model leaves
    # the denominator (index-based), unlike the released code's value-based masking.
    a, b, c = 0.3, -1.2, 0.7
    index_based = ((-a + _lse([a, b, c])) + (-b + _lse([b, c]))) / 2
    # Value-based: model 0 stays in the second denominator (its label ties model 1's).
    value_based = ((-a + _lse([a, b, c])) + (-b + _lse([a, b, c]))) / 2
    got = _call(losses.plackett_luce, [a, b, c], [2, 2, 1])
    assert got == pytest.approx(index_based, rel=1e-6)
    assert abs(got - value_based) > 1e-3


def test_plackett_luce_masked_models_are_dropped_and_normalised_by_valid_count():
    # Model 1 has no label (its label value and score must not matter); n = 3 valid, so / 2.
    s0, s2, s3 = 0.5, -0.25, 1.5
    expected = ((-s0 + _lse([s0, s2, s3])) + (-s3 + _lse([s3, s2]))) / 2  # labels 9 > 4 > 1
    for junk_score, junk_label in [(100.0, 50.0), (-3.0, 0.0)]:
        got = _call(losses.plackett_luce, [s0, junk_score, s2, s3], [9, junk_label, 1, 4],
                    [True, False, True, True])
        assert got == pytest.approx(expected, rel=1e-6)


def test_tasks_with_fewer_than_two_labels_have_zero_loss_and_weight():
    scores = jnp.asarray([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    labels = jnp.asarray([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    mask = jnp.asarray([[True, False, False], [True, True, True]])
    for loss in losses.LOSSES.values():
        values = jax.jit(loss)(scores, labels, mask)
        assert float(values[0]) == 0.0 and float(values[1]) > 0.0
    weights = losses.task_weights(mask)
    np.testing.assert_array_equal(weights, [0.0, 1.0])
    per_task = jnp.asarray([5.0, 2.0])
    assert float(losses.batch_loss(per_task, weights)) == pytest.approx(2.0)


def test_listnet_hand_computed_with_mask_and_temperature():
    s = [0.2, 1.0, -0.5]
    r = [2.0, 0.0, 1.0]
    t = 0.5
    target = np.exp(np.array(r) / t) / np.exp(np.array(r) / t).sum()
    log_pred = np.array(s) - _lse(s)
    expected = -float(np.sum(target * log_pred))
    assert _call(losses.listnet, s, r, temperature=t) == pytest.approx(expected, rel=1e-5)
    # A masked extra model changes nothing.
    assert _call(losses.listnet, s + [9.0], r + [7.0], [True, True, True, False],
                 temperature=t) == pytest.approx(expected, rel=1e-5)


def test_pairwise_logistic_hand_computed_ties_and_mask():
    s = [0.0, 1.0, 3.0, 2.0]
    labels = [3.0, 1.0, 1.0, 8.0]  # models 1 and 2 tie (no pair); model 3 is masked
    mask = [True, True, True, False]
    softplus = lambda x: math.log1p(math.exp(x))
    pairs = [(0, 1), (0, 2)]  # (better, worse)
    expected = sum(softplus(s[j] - s[i]) for i, j in pairs) / len(pairs)
    assert _call(losses.pairwise_logistic, s, labels, mask) == pytest.approx(expected, rel=1e-6)


def test_gradients_are_finite_with_masks_and_zero_for_masked_scores(rng):
    scores = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    labels = jnp.asarray(rng.permutation(15).reshape(3, 5), jnp.float32)
    mask = jnp.asarray(rng.random((3, 5)) < 0.7).at[:, :2].set(True)
    for name, loss in losses.LOSSES.items():
        objective = lambda s, loss=loss: losses.batch_loss(loss(s, labels, mask),
                                                           losses.task_weights(mask))
        grads = jax.jit(jax.grad(objective))(scores)
        assert np.isfinite(np.asarray(grads)).all(), name
        np.testing.assert_array_equal(np.asarray(grads)[~np.asarray(mask)], 0.0, err_msg=name)


def test_loss_is_minimised_by_the_true_order():
    labels = [4.0, 2.0, 3.0, 1.0]
    best = [4.0, 2.0, 3.0, 1.0]
    for loss in losses.LOSSES.values():
        values = [
            _call(loss, [3 * best[i] for i in p], labels) for p in itertools.permutations(range(4))
        ]
        assert min(values) == pytest.approx(_call(loss, [3 * b for b in best], labels))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one shape"):
        losses.plackett_luce(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="unknown ranking loss"):
        losses.get_loss("hinge")
    with pytest.raises(ValueError, match="temperature"):
        losses.listnet(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2), bool),
                       temperature=0.0)
