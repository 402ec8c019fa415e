"""spider/model.py, spider/tokens.py: efficient vs full attention, symmetries, masks, init."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from mspider_jax.spider import model as model_lib
from mspider_jax.spider import tokens

MODEL_DIMS = (6, 8, 5, 7)  # the synthetic zoo of the other spider tests: shared compilations
GENERIC_DIM = 12


@functools.lru_cache(maxsize=None)
def _ranker(width=16, num_heads=1, depth=1, seed=0, model_dims=MODEL_DIMS):
    """Shared between tests (initialisation compiles one program per parameter shape)."""
    return model_lib.Ranker(num_models=len(model_dims), generic_dim=GENERIC_DIM,
                            model_dims=model_dims, width=width, num_heads=num_heads, depth=depth,
                            dropout=0.1, rngs=nnx.Rngs(seed))


def _inputs(rng, batch=3, generic_length=8, specific_length=4, model_dims=MODEL_DIMS):
    generic = rng.normal(size=(batch, generic_length, GENERIC_DIM)).astype(np.float32)
    generic_mask = np.arange(generic_length)[None] < rng.integers(1, generic_length + 1,
                                                                  size=(batch, 1))
    specific = rng.normal(size=(batch, len(model_dims), specific_length,
                                max(model_dims))).astype(np.float32)
    specific_mask = rng.random((batch, len(model_dims), specific_length)) < 0.6
    specific_mask[0, 1] = False  # a PTM that is not enriched
    return generic, generic_mask, specific, specific_mask


@functools.lru_cache(maxsize=None)
def _forward(graphdef, full):
    """Jitted deterministic forward of either form (one compile per architecture and shape)."""

    def run(state, *inputs):
        ranker = nnx.merge(graphdef, state)
        return (ranker.full_sequence_scores if full else ranker)(*inputs)

    return jax.jit(run)


def _scores(ranker, *inputs, full=False):
    graphdef, state = nnx.split(ranker)
    return np.asarray(_forward(graphdef, full)(state, *inputs))


@pytest.mark.parametrize("num_heads, depth", [(1, 1), (2, 2)])
def test_efficient_form_matches_full_sequence_attention(rng, num_heads, depth):
    ranker = _ranker(num_heads=num_heads, depth=depth)
    generic, generic_mask, specific, specific_mask = _inputs(rng)
    graphdef, state = nnx.split(ranker)

    @jax.jit  # all four forwards in one program: one compilation
    def both_forms(state):
        model = nnx.merge(graphdef, state)
        return (model(generic, generic_mask, specific, specific_mask),
                model.full_sequence_scores(generic, generic_mask, specific, specific_mask),
                model(generic, generic_mask), model.full_sequence_scores(generic, generic_mask))

    with_specific, with_specific_full, stage1, stage1_full = map(np.asarray, both_forms(state))
    np.testing.assert_allclose(with_specific, with_specific_full, atol=2e-5)
    np.testing.assert_allclose(stage1, stage1_full, atol=2e-5)
    assert with_specific.shape == (3, len(MODEL_DIMS))
    assert np.abs(with_specific - stage1).max() > 1e-3  # the specific tokens do matter


def test_shuffling_the_zoo_shuffles_the_scores(rng):
    ranker = _ranker()
    generic, generic_mask, specific, specific_mask = _inputs(rng)
    perm = np.array([2, 0, 3, 1])
    permuted = _ranker(seed=1, model_dims=tuple(MODEL_DIMS[i] for i in perm))
    # Same weights, zoo order permuted (kernels keep their own d_m rows; the rest is zero padding).
    state = nnx.state(ranker, nnx.Param)
    new_state = nnx.state(permuted, nnx.Param)
    new_state["model_tokens"]["embedding"].set_value(state["model_tokens"]["embedding"][...][perm])
    new_state["model_projections"]["kernel"].set_value(
        state["model_projections"]["kernel"][...][perm])
    new_state["model_projections"]["bias"].set_value(state["model_projections"]["bias"][...][perm])
    for name in ("generic_projection", "blocks", "head_norm", "head"):
        nnx.update(getattr(permuted, name), nnx.state(getattr(ranker, name)))
    nnx.update(permuted, new_state)
    expected = _scores(ranker, generic, generic_mask, specific, specific_mask)
    got = _scores(permuted, generic, generic_mask, specific[:, perm], specific_mask[:, perm])
    np.testing.assert_allclose(got, expected[:, perm], atol=1e-5)


def test_padded_rows_do_not_change_scores(rng):
    ranker = _ranker()
    generic, generic_mask, specific, specific_mask = _inputs(rng, generic_length=8,
                                                             specific_length=4)
    base = _scores(ranker, generic, generic_mask, specific, specific_mask)
    # Longer padding, filled with garbage (masked rows must be ignored whatever they hold).
    long_generic = np.concatenate(
        [generic, 50 * rng.normal(size=(3, 24, GENERIC_DIM)).astype(np.float32)], axis=1)
    long_generic_mask = np.concatenate([generic_mask, np.zeros((3, 24), bool)], axis=1)
    extra = (3, len(MODEL_DIMS), 4)
    long_specific = np.concatenate([specific, 50 * rng.normal(size=(*extra, 8)).astype(np.float32)],
                                   axis=2)
    long_specific_mask = np.concatenate([specific_mask, np.zeros(extra, bool)], axis=2)
    garbage_generic = np.where(generic_mask[..., None], generic, 1e3)
    np.testing.assert_allclose(
        _scores(ranker, long_generic, long_generic_mask, long_specific, long_specific_mask), base,
        atol=1e-5)
    np.testing.assert_allclose(
        _scores(ranker, garbage_generic, generic_mask, specific, specific_mask), base, atol=1e-5)


def test_fully_masked_specific_block_equals_no_block_and_leaves_others_unchanged(rng):
    ranker = _ranker()
    generic, generic_mask, specific, specific_mask = _inputs(rng)
    stage1 = _scores(ranker, generic, generic_mask, None, None)
    none_enriched = _scores(ranker, generic, generic_mask, specific, np.zeros_like(specific_mask))
    np.testing.assert_allclose(none_enriched, stage1, atol=1e-6)
    only_model_2 = specific_mask.copy()
    only_model_2[:, [0, 1, 3]] = False
    only_model_2[:, 2, 0] = True
    scores = _scores(ranker, generic, generic_mask, specific, only_model_2)
    np.testing.assert_allclose(scores[:, [0, 1, 3]], stage1[:, [0, 1, 3]], atol=1e-6)
    assert np.abs(scores[:, 2] - stage1[:, 2]).min() > 1e-4


def test_dropout_is_random_in_training_mode_only(rng):
    ranker = _ranker()
    generic, generic_mask, _, _ = _inputs(rng)
    graphdef, state = nnx.split(ranker)

    @jax.jit
    def train_mode(state, key):
        ranker = nnx.merge(graphdef, state)
        return ranker(generic, generic_mask, deterministic=False, rngs=nnx.Rngs(dropout=key))

    call = lambda seed: np.asarray(train_mode(state, jax.random.key(seed)))
    np.testing.assert_array_equal(call(1), call(1))
    assert np.abs(call(1) - call(2)).max() > 1e-4
    assert np.abs(call(1) - _scores(ranker, generic, generic_mask, None, None)).max() > 1e-4


def test_initialisation_follows_the_released_code():
    # Small shapes shared with the other tests (each new shape costs compilations), so the
    # tolerances of the standard deviations are loose; bounds and zero rows are exact.
    width = 16
    ranker = _ranker()
    block = ranker.blocks[0]
    qkv = np.concatenate(
        [np.ravel(layer.kernel[...]) for layer in (block.query, block.key, block.value)])
    assert all(layer.bias is None for layer in (block.query, block.key, block.value))
    assert np.std(qkv) == pytest.approx(np.sqrt(2.0 / (width + width)), rel=0.1)  # N(0, 2/(D+d_k))
    xavier_std = np.sqrt(2.0 / (width + width))
    assert np.std(block.output.kernel[...]) == pytest.approx(xavier_std, rel=0.15)
    assert 0 < np.abs(block.output.bias[...]).max() <= 1 / np.sqrt(width)
    for layer, fan_in in ((ranker.generic_projection, GENERIC_DIM), (ranker.head, width)):
        bound = 1 / np.sqrt(fan_in)  # PyTorch Linear: U(±1/sqrt(fan_in)) for weights and bias
        assert np.abs(layer.kernel[...]).max() <= bound and np.abs(layer.bias[...]).max() <= bound
        assert np.abs(layer.bias[...]).max() > 0
    # Uniform up to the bound (not lecun-normal).
    assert np.abs(ranker.generic_projection.kernel[...]).max() > 0.9 / np.sqrt(GENERIC_DIM)
    kernel = np.asarray(ranker.model_projections.kernel[...])
    bias = np.asarray(ranker.model_projections.bias[...])
    for m, dim in enumerate(MODEL_DIMS):
        assert 0.8 / np.sqrt(dim) < np.abs(kernel[m, :dim]).max() <= 1 / np.sqrt(dim)
        assert np.abs(bias[m]).max() <= 1 / np.sqrt(dim)
        # Zero padding rows of the smaller models.
        np.testing.assert_array_equal(kernel[m, dim:], 0.0)
    assert np.std(ranker.model_tokens.embedding[...]) == pytest.approx(1.0, rel=0.25)  # N(0, 1)
    np.testing.assert_array_equal(block.norm.scale[...], 1.0)
    np.testing.assert_array_equal(block.norm.bias[...], 0.0)


def test_bad_inputs_raise():
    ranker = _ranker()
    with pytest.raises(ValueError, match="generic must be"):
        ranker(np.zeros((2, 8, 4)), np.ones((2, 8), bool))
    generic, generic_mask = np.zeros((2, 8, GENERIC_DIM)), np.ones((2, 8), bool)
    with pytest.raises(ValueError, match="specific must be"):
        ranker(generic, generic_mask, np.zeros((2, 4, 4, 5)), np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="both"):
        ranker(generic, generic_mask, np.zeros((2, 4, 4, 8)))
    with pytest.raises(ValueError, match="divisible"):
        _ranker(width=10, num_heads=4)


def test_pad_rows_and_bucket_length():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded, mask = tokens.pad_rows(rows, 5, dim=4)
    np.testing.assert_array_equal(padded[:3, :2], rows)
    assert (padded[3:] == 0).all() and (padded[:, 2:] == 0).all()
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    truncated, mask = tokens.pad_rows(rows, 2)  # the paper's P_h truncation keeps the first rows
    np.testing.assert_array_equal(truncated, rows[:2])
    assert mask.all()
    assert [tokens.bucket_length(n) for n in (0, 1, 8, 9, 100)] == [8, 8, 8, 16, 128]
    with pytest.raises(ValueError, match="cannot pad"):
        tokens.pad_rows(rows, 3, dim=1)
