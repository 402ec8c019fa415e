"""Metrics part 1: every metric against independent NumPy float64 re-derivations of the spec
(tests/metrics_reference.py), hand-computed cases, invariances and precision (f32 default vs f64)."""

import jax
import numpy as np
import pytest

import metrics_reference as R
from mspider_jax import metrics as M
from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics.emms import sparsemax
from mspider_jax.metrics.synthetic import make_task

# N > D (the Gram path) and N <= D (the kernel / thin-SVD paths).
TALL = make_task(240, 24, 5, 30, seed=1)
WIDE = make_task(36, 48, 3, 20, seed=2)


def rel(a, b):
    return abs(a - b) / abs(b)


def reference(name, task, convention="paper"):
    f, z, y = task.features, task.logits, task.labels
    c = int(y.max()) + 1
    return {
        "hscore": lambda: R.hscore(f, y),
        "leep": lambda: R.leep(z, y, model_spider=convention == "model_spider"),
        "nce": lambda: R.nce(z, y),
        "logme": lambda: R.logme(f, np.eye(c)[y]),
        "pactran_dirichlet": lambda: R.pactran_dirichlet(z, y),
        "pactran_gamma": lambda: R.pactran_gamma(z, y),
        "lfc": lambda: R.lfc(f, y),
        "transrate": lambda: R.transrate_coding_rate(f, y),
        "emms": lambda: R.emms(f, y),
    }[name]()


MINE = ("hscore", "leep", "logme", "nce", "pactran_dirichlet", "pactran_gamma", "lfc", "transrate", "emms")
# The metrics whose model_spider convention must match the spec to 1e-6 in float64.
MODEL_SPIDER_SET = ("hscore", "leep", "logme", "nce", "pactran_dirichlet", "pactran_gamma", "lfc")


@pytest.mark.parametrize("name", MINE)
def test_default_call_matches_float64_reference(name):
    # The default call: float32 inputs, no global flags. 1e-4 relative is the contract.
    inputs = dict(features=TALL.features, logits=TALL.logits, labels=TALL.labels)
    assert rel(M.score(name, **inputs), reference(name, TALL)) < 1e-4
    assert not jax.config.jax_enable_x64  # the call must not leak x64 into the caller


@pytest.mark.parametrize("name", MODEL_SPIDER_SET)
def test_model_spider_convention_in_float64(name):
    with jax.enable_x64(True):
        value = M.score(
            name, features=TALL.features.astype(np.float64), logits=TALL.logits.astype(np.float64),
            labels=TALL.labels, convention="model_spider",
        )
    assert rel(value, reference(name, TALL, "model_spider")) < 1e-6


@pytest.mark.parametrize("name", ("hscore", "logme", "lfc", "transrate"))
def test_wide_features_n_below_d(name):
    inputs = dict(features=WIDE.features, logits=WIDE.logits, labels=WIDE.labels)
    assert rel(M.score(name, **inputs), reference(name, WIDE)) < 1e-4


def test_emms_perfect_fit_when_n_below_d():
    # With N <= D the standardised one-hot targets are in the range of F̂: residual ~ 0 (reference too).
    value = M.score("emms", features=WIDE.features, labels=WIDE.labels)
    assert abs(value) < 1e-6 and abs(R.emms(WIDE.features, WIDE.labels)) < 1e-6


def test_leep_paper_convention_has_no_epsilons():
    paper = M.score("leep", logits=TALL.logits, labels=TALL.labels)
    spider = M.score("leep", logits=TALL.logits, labels=TALL.labels, convention="model_spider")
    assert rel(paper, R.leep(TALL.logits, TALL.labels, model_spider=False)) < 1e-6
    assert rel(spider, R.leep(TALL.logits, TALL.labels, model_spider=True)) < 1e-6
    assert paper != spider


def test_logme_regression_tall_and_wide(rng):
    targets = rng.normal(size=(WIDE.features.shape[0], 2)) + 5.0
    assert rel(M.score("logme", features=WIDE.features, labels=targets), R.logme(WIDE.features, targets)) < 1e-4
    # A 1-D float target is one column.
    target = rng.normal(size=TALL.features.shape[0]) - 3.0
    assert rel(M.score("logme", features=TALL.features, labels=target), R.logme(TALL.features, target[:, None])) < 1e-4


def test_logme_wide_classification():
    y = WIDE.labels
    assert rel(M.score("logme", features=WIDE.features, labels=y), R.logme(WIDE.features, np.eye(3)[y])) < 1e-4


def test_transrate_official_form():
    for task in (TALL, WIDE):
        value = M.score("transrate", features=task.features, labels=task.labels, form="official")
        assert rel(value, R.transrate_official(task.features, task.labels)) < 1e-4
    with pytest.raises(ValueError, match="form"):
        M.score("transrate", features=TALL.features, labels=TALL.labels, form="paper")


def test_emms_with_label_embeddings(rng):
    embeddings = rng.normal(size=(5, 7, 3))
    value = M.score("emms", features=TALL.features, labels=TALL.labels, label_embeddings=embeddings)
    assert rel(value, R.emms(TALL.features, TALL.labels, embeddings)) < 1e-4
    with pytest.raises(ValueError, match="label_embeddings"):
        M.score("emms", features=TALL.features, labels=TALL.labels, label_embeddings=embeddings[:4])


def test_pactran_alpha_option():
    value = M.score("pactran_dirichlet", logits=TALL.logits, labels=TALL.labels, alpha=0.1)
    assert rel(value, R.pactran_dirichlet(TALL.logits, TALL.labels, alpha=0.1)) < 1e-4


def test_lfc_model_spider_subsamples_with_key():
    key = jax.random.key(3)
    value = M.score("lfc", features=TALL.features, labels=TALL.labels, convention="model_spider", key=key, max_samples=100)
    rows = np.asarray(jax.random.permutation(key, TALL.features.shape[0])[:100])
    assert rel(value, R.lfc(TALL.features[rows], TALL.labels[rows])) < 1e-4


# -- hand-computed cases ------------------------------------------------------------------------------


def test_hscore_by_hand():
    # f = 0,1,2,3 with classes {0,1},{2,3}: var = 5/3, class means 0.5, 2.5 -> Σ_g = (2+2)/3, H = 0.8.
    value = M.score("hscore", features=np.array([[0.0], [1.0], [2.0], [3.0]], np.float32), labels=np.array([0, 0, 1, 1]))
    assert value == pytest.approx(0.8, rel=1e-6)


def test_nce_by_hand():
    # y = 0,0,1,1 and source argmax z = 0,0,0,1: J = [[.5, 0], [.25, .25]], p_s = [.75, .25].
    logits = np.array([[2.0, 0.0], [3.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    expected = 0.5 * np.log(0.5 / 0.75) + 0.25 * np.log(0.25 / 0.75) + 0.25 * np.log(1.0)
    for convention in ("paper", "model_spider"):
        assert M.score("nce", logits=logits, labels=np.array([0, 0, 1, 1]), convention=convention) == pytest.approx(expected, rel=1e-9)


def test_nce_ties_take_the_first_index():
    # Row 2 ties between source classes 0 and 1: the first index (0) wins, as in numpy/torch argmax,
    # so z = 0,0,0,1 and the value equals the hand-computed case above.
    logits = np.array([[2.0, 0.0], [3.0, 1.0], [0.5, 0.5], [0.0, 1.0]], np.float32)
    expected = 0.5 * np.log(0.5 / 0.75) + 0.25 * np.log(0.25 / 0.75)
    assert M.score("nce", logits=logits, labels=np.array([0, 0, 1, 1])) == pytest.approx(expected, rel=1e-9)


def test_leep_by_hand():
    # Two samples, Cs = 2 one-hot-ish probabilities: P = [[1, 0], [0, 1]] -> Q = I, E_{i,y_i} = 1, LEEP = 0.
    logits = np.array([[50.0, -50.0], [-50.0, 50.0]], np.float32)
    assert M.score("leep", logits=logits, labels=np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_lfc_by_hand():
    # Perfectly label-aligned 1-D features ±1: K_x = K_y exactly -> correlation 1.
    value = M.score("lfc", features=np.array([[1.0], [1.0], [-1.0], [-1.0]], np.float32), labels=np.array([0, 0, 1, 1]))
    assert value == pytest.approx(1.0, rel=1e-9)


def test_sparsemax_matches_definition(rng):
    jitted = jax.jit(sparsemax)  # one compilation for every case (all of length 4)
    for z in (rng.normal(size=4), np.full(4, 0.1), np.array([3.0, -1.0, 0.5, 2.9]), np.array([9.0, 0.0, 0.0, 0.0])):
        with L.precision_scope():
            out = np.asarray(jitted(np.asarray(z)))
        np.testing.assert_allclose(out, R.sparsemax(z), atol=1e-12)
        assert out.sum() == pytest.approx(1.0) and (out >= 0).all()


# -- invariances --------------------------------------------------------------------------------------


def test_hscore_and_lfc_scale_invariant():
    for name in ("hscore", "lfc"):
        base = M.score(name, features=TALL.features, labels=TALL.labels)
        scaled = M.score(name, features=TALL.features * np.float32(7.25), labels=TALL.labels)
        assert rel(scaled, base) < 1e-5


@pytest.mark.parametrize("name", MINE)
def test_label_permutation_invariance(name, rng):
    permutation = rng.permutation(5)
    inputs = dict(features=TALL.features, logits=TALL.logits)
    base = M.score(name, labels=TALL.labels, **inputs)
    permuted = M.score(name, labels=permutation[TALL.labels], **inputs)
    assert rel(permuted, base) < 1e-5


# -- precision: float32 default vs float64 throughout ------------------------------------------------


@pytest.mark.parametrize("name", ("hscore", "logme", "transrate", "emms"))
def test_float32_default_matches_float64_inputs(name):
    # The feature metrics whose float32 Gram feeds float64 eigen/Cholesky steps (the logit metrics
    # are covered by the float64 model_spider test against the same NumPy references).
    value32 = M.score(name, features=TALL.features, logits=TALL.logits, labels=TALL.labels)
    with jax.enable_x64(True):
        value64 = M.score(name, features=TALL.features.astype(np.float64), logits=TALL.logits.astype(np.float64), labels=TALL.labels)
    assert rel(value32, value64) < 1e-4


def test_linalg_helpers_match_numpy(rng):
    x = (rng.normal(size=(50, 6)) + 30.0).astype(np.float32)  # large common offset
    t = rng.normal(size=(50, 2)) - 4.0
    a = np.cov(rng.normal(size=(8, 4)), rowvar=False)
    a[:, 0] = a[0, :] = 0.0  # singular
    x64 = x.astype(np.float64)

    @jax.jit
    def helpers(x, t, a):  # one compilation for all helpers
        return dict(
            gram=L.uncentered_gram(x), cross=L.uncentered_cross(x, t), kernel=L.uncentered_kernel(x),
            cov=L.covariance(x), pinv=L.pinv_psd(a, rtol=1e-10), logdet=L.logdet_spd(a + jax.numpy.eye(4)),
            variance=L.pca_eigh(x)[0],
        )

    with L.precision_scope():
        out = helpers(x, t, a)
    np.testing.assert_allclose(out["gram"], x64.T @ x64, rtol=1e-6)
    np.testing.assert_allclose(out["cross"], x64.T @ t, rtol=1e-6)
    np.testing.assert_allclose(out["kernel"], x64 @ x64.T, rtol=1e-6)
    cov = np.cov(x64, rowvar=False)
    # float32 Gram of centred data: errors relative to the spread (the largest entry), not per entry.
    np.testing.assert_allclose(out["cov"], cov, atol=1e-6 * np.abs(cov).max())
    np.testing.assert_allclose(out["pinv"], np.linalg.pinv(a, rcond=1e-10), atol=1e-10)
    assert float(out["logdet"]) == pytest.approx(np.linalg.slogdet(a + np.eye(4))[1], rel=1e-12)
    np.testing.assert_allclose(out["variance"], np.linalg.eigvalsh(cov)[::-1], rtol=1e-5, atol=1e-6 * cov.max())


@pytest.mark.parametrize("min_dim", [1, 512])  # 1: the Cholesky path with its eigh fallback; 512: eigh only
def test_psd_solve_cholesky_and_singular_paths(rng, monkeypatch, min_dim):
    monkeypatch.setattr(L, "CHOLESKY_MIN_DIM", min_dim)
    b = rng.normal(size=(6, 3))
    full = np.cov(rng.normal(size=(40, 6)), rowvar=False)  # positive definite: the Cholesky path
    singular = full.copy()
    singular[:, 2] = singular[2, :] = 0.0  # a dead unit: no Cholesky factor, the eigh pinv path
    near = full + 1e6 * np.outer(np.ones(6), np.ones(6))  # cond ~1e8, still positive definite
    with L.precision_scope():
        for a in (full, singular, near):
            out = np.asarray(jax.jit(lambda a, b: L.psd_solve(a, b, rtol=1e-15))(a, b))
            np.testing.assert_allclose(out, np.linalg.pinv(a, rcond=1e-15) @ b, rtol=1e-6, atol=1e-9)
        assert np.all(np.abs(np.asarray(L.psd_solve(singular, b, rtol=1e-15))[2]) < 1e-12)  # no weight on the null space


def test_hscore_with_a_dead_unit_matches_pinv_reference(rng):
    f = rng.normal(size=(300, 12)).astype(np.float32)
    y = rng.integers(0, 4, size=300)
    f[:, 5] = 0.0  # singular covariance: the pinv, not an inverse
    assert M.score("hscore", features=f, labels=y) == pytest.approx(R.hscore(f, y), rel=1e-4)


@pytest.mark.parametrize("dim", [L.SYMMETRIC_MIN_DIM + 3, L.SYMMETRIC_MAX_BLOCKS * L.SYMMETRIC_MIN_BLOCK_WIDTH + 5])
def test_symmetric_gram_blocks_match_one_product(rng, dim):
    assert L.symmetric_blocks(dim) > 1  # the blocked path is the one under test (CPU)
    x = rng.normal(size=(30, dim)).astype(np.float32)  # uneven blocks
    with L.precision_scope():
        out = np.asarray(jax.jit(L.gram)(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(out, x64.T @ x64, atol=1e-5 * np.abs(x64.T @ x64).max())
    assert np.array_equal(out, out.T)
    # score_zoo vmaps the blocked product over models: each slice must equal its own Gram.
    with L.precision_scope():
        batched = np.asarray(jax.jit(jax.vmap(L.gram))(np.stack([x, 2 * x])))
    np.testing.assert_allclose(batched[0], out, rtol=1e-6, atol=1e-6 * np.abs(out).max())
    np.testing.assert_allclose(batched[1], 4 * out, rtol=1e-6, atol=4e-6 * np.abs(out).max())


def test_logme_when_labels_lie_in_the_feature_span():
    # ‖t‖² − ‖Uᵀt‖² cancels to rounding noise; it once went negative and made the evidence NaN.
    rng = np.random.default_rng(0)
    n, d, c = 5000, 1024, 30
    f = np.maximum(rng.normal(size=(n, 64)) @ rng.normal(size=(64, d)) + 0.05 * rng.normal(size=(n, d)) + 0.5, 0.0)
    f[:, :50] = 0.0  # dead units
    y = rng.integers(0, c, size=n)
    f = (f + 0.3 * np.eye(c)[y] @ rng.normal(size=(c, d))).astype(np.float32)
    expected = R.logme(f, np.eye(c)[y])
    assert M.score("logme", features=f, labels=y) == pytest.approx(expected, rel=0.05)
    with jax.enable_x64(True):
        assert M.score("logme", features=f.astype(np.float64), labels=y) == pytest.approx(expected, rel=5e-3)


def _dead_unit_features(rng, n, d, c, label_strength):
    f = np.maximum(rng.normal(size=(n, 64)) @ rng.normal(size=(64, d)) + 0.05 * rng.normal(size=(n, d)) + 0.5, 0.0)
    f[:, :50] = 0.0  # dead units: exact zero eigenvalues
    y = rng.integers(0, c, size=n)
    return (f + label_strength * np.eye(c)[y] @ rng.normal(size=(c, d))).astype(np.float32), y


def _nearly_collinear_features():
    # A feature pair 3e-4 apart carrying some label signal: Σ_f's smallest eigenvalue sits below a
    # float32 scatter's rounding, so the pseudo-inverse of the float32 Gram is noise there.
    rng = np.random.default_rng(1)
    n, d, c = 1000, 64, 5
    y = rng.integers(0, c, size=n)
    f = rng.normal(size=(n, d)) + np.eye(c)[y] @ rng.normal(size=(c, d))
    f[:, 1] = f[:, 0] + 3e-4 * rng.normal(size=n) + 3e-4 * (y == 2)
    return f.astype(np.float32), y


@pytest.mark.parametrize("name", ["hscore", "emms"])
def test_float32_default_refines_an_unresolved_pseudo_inverse(name):
    # The float32 Gram alone was 4.6e-4 (H-Score) and 6e-3 (EMMS) off the reference here.
    f, y = _nearly_collinear_features()
    expected = float(np.sum(R.hscore(f, y))) if name == "hscore" else R.emms(f, y)
    assert M.score(name, features=f, labels=y) == pytest.approx(expected, rel=1e-7)
    with L.precision_scope():
        x = (f - f.mean(axis=0)).astype(np.float32)
        gram32 = jax.numpy.asarray(x.T.astype(np.float32) @ x)
        eps32 = float(np.finfo(np.float32).eps)
        assert not bool(L.psd_solver_resolved(gram32, 1e-15, eps32)[1])
        task = make_task(1000, 64, 5, 10, seed=1)
        z = task.features - task.features.mean(axis=0)
        assert bool(L.psd_solver_resolved(jax.numpy.asarray(z.T @ z), 1e-15, eps32)[1])
        assert bool(L.psd_solver_resolved(gram32, 1e-15, None)[1])  # no rounding level: nothing to check


@pytest.mark.parametrize("seed", [0, 4])
def test_logme_with_dead_units_matches_the_reference(seed):
    # Exactly-zero feature columns (dead ReLU units): the reference's SVD keeps their null singular
    # values (rounding noise > 1e-20), `eigh` returns exact zeros there; dropping them was 5 % off.
    rng = np.random.default_rng(seed)
    n, d, c = 1000, 128, 8
    y = rng.integers(0, c, size=n)
    f = np.maximum(rng.normal(size=(n, 32)) @ rng.normal(size=(32, d)) + 2.0 * np.eye(c)[y] @ rng.normal(size=(c, d)), 0.0)
    f[:, :3] = 0.0
    f = f.astype(np.float32)
    expected = R.logme(f, np.eye(c)[y])
    assert M.score("logme", features=f, labels=y) == pytest.approx(expected, rel=1e-5)
    with jax.enable_x64(True):
        assert M.score("logme", features=f.astype(np.float64), labels=y) == pytest.approx(expected, rel=1e-9)
        assert M.score("logme", features=f.astype(np.float64), labels=y, decomposition="tridiagonal") == pytest.approx(expected, rel=1e-9)


def test_logme_float32_gram_guard_flags_labels_in_the_span_only():
    import jax.numpy as jnp

    from mspider_jax.metrics import _stats
    from mspider_jax.metrics import logme as logme_lib

    eps32 = float(np.finfo(np.float32).eps)
    in_span = _dead_unit_features(np.random.default_rng(0), 5000, 1024, 30, label_strength=0.3)
    ordinary = make_task(3000, 300, 12, 20, seed=4)
    with L.precision_scope():
        for (f, y), c, expected in ((in_span, 30, False), ((ordinary.features, ordinary.labels), 12, True)):
            moments = _stats.moments(jnp.asarray(f), L.one_hot(jnp.asarray(y), c, jnp.float32))
            _, lambdas = logme_lib._evidences_and_lambdas(moments, "eigh", None)
            assert bool(logme_lib.gram_resolves(moments, lambdas, eps32)) is expected
        # the refined default equals the float64 features' score on the flagged case
        f, y = in_span
        refined = M.score("logme", features=f, labels=y)
    with jax.enable_x64(True):
        assert refined == pytest.approx(M.score("logme", features=f.astype(np.float64), labels=y), rel=1e-9)


@pytest.mark.parametrize("kind", ["dense", "with_identity_reflectors", "with_zero_rows"])
def test_tridiagonal_form_reproduces_the_matrix_and_its_spectrum(rng, kind):
    import jax.numpy as jnp

    d = 40
    a = rng.normal(size=(d, d))
    a = a @ a.T
    if kind == "with_identity_reflectors":  # block-diagonal: some Householder reflectors are I (τ = 0)
        a[:20, 20:] = a[20:, :20] = 0.0
        a[25:, :25] = a[:25, 25:] = 0.0
    if kind == "with_zero_rows":  # leading dead units: exactly zero 1x1 blocks of T (τ = 0, e = 0), exact
        a[:2, :] = a[:, :2] = 0.0  # zero eigenvalues, which bisection alone returns as ~pivmin
    with L.precision_scope():
        diagonal, off, reflectors, taus = L.tridiagonalize(jnp.asarray(a))
        if kind == "with_identity_reflectors":
            assert np.any(np.asarray(taus) == 0)
        q_t = np.asarray(L.tridiagonal_basis_transpose(reflectors, taus, jnp.eye(d), block=7))  # blocks of 7
        tri = np.diag(np.asarray(diagonal)) + np.diag(np.asarray(off), 1) + np.diag(np.asarray(off), -1)
        np.testing.assert_allclose(q_t @ q_t.T, np.eye(d), atol=1e-12)
        np.testing.assert_allclose(q_t @ a @ q_t.T, tri, atol=1e-10 * np.abs(a).max())
        eigenvalues = np.asarray(L.tridiagonal_eigenvalues(diagonal, off))
        assert eigenvalues.dtype == np.float64
        np.testing.assert_allclose(eigenvalues, np.linalg.eigvalsh(a), rtol=1e-12, atol=1e-12 * np.abs(a).max())
        if kind == "with_zero_rows":
            np.testing.assert_array_equal(eigenvalues[:2], 0.0)
            assert eigenvalues[2] > 1e-6


def test_tridiagonal_eigenvalues_to_a_relative_tolerance(rng):
    import jax.numpy as jnp

    # Bisection stopped at rtol·‖T‖ (LogME's setting for float32 features): every eigenvalue within that
    # absolute error of LAPACK's, exact zeros of dead units still exactly 0.
    a = rng.normal(size=(60, 60))
    a = a @ a.T
    a[:2, :] = a[:, :2] = 0.0
    with L.precision_scope():
        diagonal, off, _, _ = L.tridiagonalize(jnp.asarray(a))
        loose = np.asarray(L.tridiagonal_eigenvalues(diagonal, off, rtol=1e-6))
        exact = np.linalg.eigvalsh(a)
    norm = np.abs(exact).max()
    assert np.max(np.abs(loose - exact)) <= 2e-6 * norm
    assert np.max(np.abs(loose - exact)) > 1e-12 * norm  # the tolerance is really used
    np.testing.assert_array_equal(loose[:2], 0.0)


def test_logme_float32_default_bisects_to_the_float32_gram_accuracy():
    from mspider_jax.metrics import logme as logme_lib

    task = make_task(4000, 1600, 20, 20, seed=5)  # D >= 1536: the tridiagonal form on CPU
    assert logme_lib.BISECTION_RTOL_FLOAT32 == 1e-10
    default = M.score("logme", features=task.features, labels=task.labels)
    eigh = M.score("logme", features=task.features, labels=task.labels, decomposition="eigh")
    assert default == pytest.approx(eigh, rel=1e-7)


def test_logme_tridiagonal_form_equals_the_eigh_form(rng):
    import jax.numpy as jnp

    from mspider_jax.metrics import _stats
    from mspider_jax.metrics import logme as logme_lib

    task = make_task(3000, 300, 12, 20, seed=4)
    f, y = task.features.copy(), task.labels
    f[:, :30] = 0.0  # dead units: exact zero eigenvalues
    with L.precision_scope():
        moments = _stats.moments(jnp.asarray(f), L.one_hot(jnp.asarray(y), 12, jnp.float32))
        eigh = np.asarray(logme_lib.logme_evidences_from_moments(moments, decomposition="eigh"))
        args = (_stats.uncentered_gram(moments), _stats.uncentered_cross(moments), moments.target_energy, moments.count)
        tridiagonal, trusted, _ = logme_lib._evidences_tridiagonal(*args)
        assert np.all(np.asarray(trusted))
        np.testing.assert_allclose(np.asarray(tridiagonal), eigh, rtol=1e-10)
        with pytest.raises(ValueError, match="decomposition"):
            logme_lib.logme_evidences_from_moments(moments, decomposition="svd")

        # Labels almost in the span of the features: the residual is too ill-conditioned for the
        # tridiagonal solve, and the eigh form is used instead.
        f, y = _dead_unit_features(np.random.default_rng(0), 5000, 1024, 30, label_strength=0.3)
        moments = _stats.moments(jnp.asarray(f), L.one_hot(jnp.asarray(y), 30, jnp.float32))
        args = (_stats.uncentered_gram(moments), _stats.uncentered_cross(moments), moments.target_energy, moments.count)
        assert not np.any(np.asarray(logme_lib._evidences_tridiagonal(*args)[1]))
        np.testing.assert_allclose(  # the unguarded tridiagonal form is ~18 % off on this case
            np.asarray(logme_lib.logme_evidences_from_moments(moments, decomposition="tridiagonal")),
            np.asarray(logme_lib.logme_evidences_from_moments(moments, decomposition="eigh")),
            rtol=1e-9,
        )


def test_gbc_randomized_default_is_close_to_the_exact_projection():
    task = make_task(1500, 256, 6, 20, seed=3, separation=0.3)
    exact = M.score("gbc", features=task.features, labels=task.labels, pca_solver="eigh")
    assert M.score("gbc", features=task.features, labels=task.labels) == pytest.approx(exact, rel=5e-3)


def test_nce_sorted_counts_equal_the_joint_table(rng):
    from mspider_jax.metrics import nce as nce_lib

    labels = rng.integers(0, 7, size=500).astype(np.int32)
    pseudo = rng.choice([0, 3, 3, 40, 999, 20_000], size=500).astype(np.int32)  # sparse, large ids
    with L.precision_scope():
        sorted_value = float(jax.jit(nce_lib.nce_from_pseudo_labels, static_argnums=2)(pseudo, labels, 7))
        table_value = float(nce_lib.nce_from_counts(nce_lib.joint_counts(pseudo, labels, 7, 20_001)))
    assert sorted_value == pytest.approx(table_value, rel=1e-12)


def test_nce_host_argmax_path(rng):
    logits = rng.normal(size=(300, 50)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    on_host = M.score("nce", logits=logits, labels=labels)  # "paper": argmax taken on the host
    assert on_host == pytest.approx(R.nce(logits, labels), rel=1e-10)
    assert on_host == pytest.approx(M.score("nce", logits=logits, labels=labels, convention="model_spider"), rel=1e-6)
    below_max = logits.copy()
    below_max[0, np.argmin(logits[0])] = -np.inf  # cannot be the argmax: accepted, same score
    assert M.score("nce", logits=below_max, labels=labels) == on_host
    for bad in (np.nan, np.inf):
        broken = logits.copy()
        broken[7, 3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            M.score("nce", logits=broken, labels=labels)
    np.testing.assert_allclose(M.score_zoo("nce", logits=[logits, logits[:, ::-1].copy()], labels=labels),
                               [on_host, M.score("nce", logits=logits[:, ::-1].copy(), labels=labels)], rtol=1e-12)


def test_nce_reduced_signature_matches_the_reduced_arrays(rng):
    from mspider_jax.metrics import _dispatch
    from mspider_jax.metrics._registry import get

    logits = rng.normal(size=(40, 9)).astype(np.float32)
    spec = get("nce")
    raw = _dispatch.input_signature({"logits": logits})
    reduced = spec.host_reduce({"logits": logits}, "paper", "nce")
    assert spec.model_signature(raw, "paper") == _dispatch.input_signature(reduced)
    assert spec.model_signature(raw, "model_spider") == raw and spec.host_reduce({"logits": logits}, "model_spider", "nce") is None
