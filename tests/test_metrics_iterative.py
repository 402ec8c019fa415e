"""Tests of the iterative / projection transferability metrics (metrics part 2): N-LEEP, OTCE,
PACTran-Gauss, GBC, SFDA, NCTI, ETran, PED.

Expected values are independent float64 NumPy/SciPy re-derivations written from the spec
(/work/shared/specs/metrics.md §5-§10), or scikit-learn / SciPy solvers used as references (LDA,
GaussianMixture, L-BFGS-B, exact assignment), on tiny inputs.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from mspider_jax import metrics
from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _pca, ncti, ped, sfda


@pytest.fixture
def one_thread():
    """Runs scikit-learn/BLAS single-threaded: their OpenMP spin-waits only burn CPU on tiny problems."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _task(rng: np.random.Generator, n: int = 120, d: int = 12, c: int = 4, sep: float = 1.0, offset: float = 0.0):
    """Gaussian classes with class-dependent spread: features [N, D] float64, labels [N] (all classes present)."""
    labels = rng.permutation(np.arange(n) % c)
    means = sep * rng.normal(size=(c, d))
    scales = 0.5 + rng.random(size=(c, 1))
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    features = means[labels] + scales[labels] * (rng.normal(size=(n, d)) @ mixing) + offset
    return features, labels


def _softmax(z: np.ndarray) -> np.ndarray:
    return scipy.special.softmax(z, axis=1)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ------------------------------------------------------------------------------------------------
# NumPy references (float64, loops as in the reference code).


def np_sfda(features: np.ndarray, labels: np.ndarray, round_to: np.dtype | None = None) -> float:
    """SFDA as the reference computes it: generalized eigh with all D eigenvectors (spec §10.1)."""
    x = np.array(features, dtype=np.float64)
    n, d = x.shape
    c = labels.max() + 1
    priors = np.bincount(labels) / n

    def fit(x: np.ndarray, shrinkage: float | None):
        means = np.stack([x[labels == k].mean(0) for k in range(c)])
        within = sum(priors[k] * np.cov(x[labels == k].T, bias=True) for k in range(c))
        if shrinkage is None:
            v = within @ np.ones(d)
            for _ in range(3):
                u = within @ v
                u /= np.linalg.norm(u)
                v = within @ u
                v /= np.linalg.norm(v)
            shrinkage = max(np.exp(-5.0 * (v @ within @ u)), 1e-10)
        shrunk = (1 - shrinkage) * within + shrinkage * np.trace(within) / d * np.eye(d)
        between = np.cov(x.T, bias=True) - within
        _, vecs = scipy.linalg.eigh(between, shrunk)
        coef = means @ vecs @ vecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        return _softmax(x @ coef.T + intercept), shrinkage, means

    probs, shrinkage, means = fit(x, None)
    softened = _softmax(probs)
    others = (means.sum(0) - means) / (c - 1)
    mixed = x.copy()
    for k in range(c):
        rows = labels == k
        w = softened[rows, k][:, None]
        mixed[rows] = w * x[rows] + (1 - w) * others[k]
    if round_to is not None:
        mixed = mixed.astype(round_to).astype(np.float64)
    probs2, _, _ = fit(mixed, shrinkage)
    return float(np.mean(probs2[np.arange(n), labels]))


def np_ped(features, source, labels, *, tau=0.1, exit_ratio=0.5, nsigma=0.6, constant=1.0, max_steps=6):
    """PED's loop on the full features, literally as spec §10.5 describes it, then SFDA."""
    x = np.array(features, dtype=np.float64)
    m = source.mean(0)
    sd = np.maximum(source.std(0), 1e-3)
    c = labels.max() + 1

    def one_step(x):
        xh = (x - m) / sd
        cents = np.stack([xh[labels == k].mean(0) for k in range(c)])
        radii = np.array([np.sqrt(xh[labels == k].var(0).sum()) for k in range(c)])
        moves = np.zeros_like(cents)
        for a in range(c):
            for b in range(a + 1, c):
                delta = cents[b] - cents[a]
                dist = np.linalg.norm(delta)
                unit = delta / dist
                overlap = max(abs(nsigma) * (radii[a] + radii[b]) - dist, 0.0)
                step = min(0.5 * tau**2 * constant * overlap, overlap)
                moves[a] -= step * unit
                moves[b] += step * unit
        xh = xh + moves[labels]
        return xh * sd + m, np.abs(moves).sum()

    x, first = one_step(x)
    for _ in range(max_steps - 1):
        moved, change = one_step(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.float64(change) / np.float64(first)
        if ratio > exit_ratio:
            x = moved
        else:
            break
    return np_sfda(x, labels)


def np_etran_components(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    c = labels.max() + 1
    energies = scipy.special.logsumexp(x, axis=1)
    count = int(0.5 * 10) * n // 1000
    s_en = np.sort(energies)[:count].mean()
    # The reference: eigh of the non-symmetric (Σ_w^s)⁻¹S_b keeps all D orthonormal eigenvectors.
    means = np.stack([x[labels == k].mean(0) for k in range(c)])
    priors = np.bincount(labels) / n
    within = sum(priors[k] * np.cov(x[labels == k].T, bias=True) for k in range(c)) + 0.1 * np.eye(d)
    between = np.cov(x.T, bias=True) - within
    _, vecs = np.linalg.eigh(np.linalg.inv(within) @ between)
    coef = means @ vecs @ vecs.T
    intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
    probs = _softmax(x @ coef.T + intercept)
    return np.array([s_en, probs[np.arange(n), labels].mean()])


def np_gbc_paper(x: np.ndarray, labels: np.ndarray, gaussian_type: str) -> float:
    c = labels.max() + 1
    stats = []
    for k in range(c):
        xs = x[labels == k]
        stats.append((xs.mean(0), np.maximum(xs.var(0), 1e-4)))
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            (m1, s1), (m2, s2) = stats[i], stats[j]
            if gaussian_type == "spherical":
                s1, s2 = np.mean(s1), np.mean(s2)
            avg = (s1 + s2) / 2
            dist = np.sum((m1 - m2) ** 2 / avg) / 8 + 0.5 * (np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2)))
            total += np.exp(-dist)
    return -total


def np_gbc_model_spider(x: np.ndarray, labels: np.ndarray) -> float:
    c = labels.max() + 1
    means = [x[labels == k].mean(0) for k in range(c)]
    covs = [np.cov(x[labels == k].T) for k in range(c)]
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            avg = (covs[i] + covs[j]) / 2
            delta = means[i] - means[j]
            m = delta @ np.linalg.pinv(avg, rcond=1e-15) @ delta
            ratio = np.abs(np.linalg.det(avg)) / (1e-5 + np.sqrt(1e-5 + np.linalg.det(covs[i]) * np.linalg.det(covs[j])))
            total += np.exp(-m / 8 - 0.5 * np.log(1e-5 + ratio))
    return -total


def np_pca_components(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact PCA: (components [D, k], explained variances [k]) from numpy's eigh."""
    z = features - features.mean(0)
    lam, vecs = np.linalg.eigh(z.T @ z / (len(z) - 1))
    return vecs[:, ::-1][:, :k], lam[::-1][:k]


def sk_ncti_components(x: np.ndarray, labels: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """NCTI's components with scikit-learn's LDA on the projected x [N, k] (spec §10.3)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    tau = max(np.exp(-np.sum(variances[:32])), 1e-10)
    if tau == 1e-10:
        lda = LinearDiscriminantAnalysis(solver="svd")
    else:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=tau)
    transformed = lda.fit_transform(x, labels)
    transformed = transformed - transformed.mean(0)
    seli = np.linalg.norm(transformed, "nuc")
    probs = lda.predict_proba(x)
    ncc = probs[np.arange(len(labels)), labels].mean()
    vc = np.log(sum(np.linalg.norm(probs[labels == k], "nuc") for k in range(labels.max() + 1)))
    return np.array([ncc, seli, vc])


# ------------------------------------------------------------------------------------------------
# Shared inputs. Tests reuse these shapes so that each metric compiles once or twice for the whole
# file (compilation dominates the run time of these tiny problems).

FEATURES, LABELS = _task(np.random.default_rng(11), n=200, d=12, c=4, sep=0.6)
FAR_FEATURES, FAR_LABELS = _task(np.random.default_rng(12), n=200, d=12, c=4, sep=50.0)
SOURCE = np.random.default_rng(13).normal(size=(40, 12)) * 1.5 + 0.3
SOURCE_LABELS = np.arange(40) % 5
WIDE, WIDE_LABELS = _task(np.random.default_rng(14), n=200, d=70, c=5, sep=0.5)  # PCA-64 metrics
PROJECTION, _ = np_pca_components(FEATURES, 6)


# ------------------------------------------------------------------------------------------------
# SFDA


def test_sfda_matches_reference_float64():
    expected = np_sfda(FEATURES, LABELS)
    got = metrics.score("sfda", features=FEATURES, labels=LABELS)
    assert 0 < got <= 1
    assert _rel(got, expected) < 1e-8


def test_sfda_float32_default_call_with_offset():
    # ReLU-like offset features in float32: class-centring keeps the float32 Gram accurate.
    f32 = (FEATURES + 20.0).astype(np.float32)
    expected = np_sfda(f32, LABELS, round_to=np.float32)
    assert _rel(metrics.score("sfda", features=f32, labels=LABELS), expected) < 1e-4



def test_sfda_float32_rank_deficient_features_stay_finite():
    """Features of rank 30 in 128 dimensions (shrinkage at its 1e-10 floor): the float32 Gram leaves
    the shrunk within-class covariance indefinite by rounding; the score must still match float64."""
    rng = np.random.default_rng(5)
    labels = np.arange(1000) % 10
    latent = rng.normal(size=(10, 30))[labels] + rng.normal(size=(1000, 30))
    features = latent @ rng.normal(size=(30, 128))
    got32 = metrics.score("sfda", features=features.astype(np.float32), labels=labels)
    got64 = metrics.score("sfda", features=features, labels=labels)
    assert np.isfinite(got32) and 0 < got64 <= 1
    assert _rel(got32, got64) < 1e-3

@pytest.mark.parametrize("name", ["sfda", "ped"])
def test_sfda_and_ped_with_fewer_samples_than_dimensions_stay_finite(name):
    """10 samples per class of 128-dim float32 features (N - C < D): Σ_w is rank-deficient by its
    shape and s sits at its 1e-10 floor; the float32 Gram's rounding made the Cholesky factor NaN."""
    rng = np.random.default_rng(0)
    labels = np.arange(50) % 5
    # Within-class spread dominated by two directions (variance ~16) spread over every coordinate,
    # the rest small (0.04): the float32 Gram's rounding then exceeds s·tr(Σ_w)/D in the null space.
    spread = 0.2 * rng.normal(size=(50, 128))
    spread[:, :2] *= 20
    spread = spread @ np.linalg.qr(rng.normal(size=(128, 128)))[0]
    features = (1.0 + rng.normal(size=(5, 128))[labels] + spread).astype(np.float32)
    inputs = dict(features=features, labels=labels)
    if name == "ped":
        inputs["source_features"] = rng.normal(size=(200, 128)).astype(np.float32)
    got32 = metrics.score(name, **inputs)
    got64 = metrics.score(name, **{k: v.astype(np.float64) if v.dtype == np.float32 else v
                                  for k, v in inputs.items()})
    assert np.isfinite(got32) and 0 < got32 <= 1
    assert _rel(got32, got64) < 1e-6
    if name == "sfda":
        assert _rel(got32, np_sfda(features, labels, round_to=np.float32)) < 1e-6


def test_sfda_power_iteration_is_three_steps(rng):
    a = rng.normal(size=(6, 6))
    a = a @ a.T
    x = a @ np.ones(6)
    for _ in range(3):
        u = a @ x / np.linalg.norm(a @ x)
        x = a @ u / np.linalg.norm(a @ u)
    with L.precision_scope():
        got = float(sfda.power_iteration_top_eigenvalue(jnp.asarray(a)))
    assert _rel(got, x @ a @ u) < 1e-12
    assert _rel(got, np.linalg.eigvalsh(a)[-1]) > 1e-9  # not the exact eigenvalue (spec: keep 3 steps)


# ------------------------------------------------------------------------------------------------
# PED


def test_ped_matches_reference():
    expected = np_ped(FEATURES, SOURCE, LABELS)
    got = metrics.score("ped", features=FEATURES, source_features=SOURCE, labels=LABELS)
    assert _rel(got, expected) < 1e-8
    # The repulsion really moved the classes: PED differs from SFDA on the raw features.
    assert abs(got - np_sfda(FEATURES, LABELS)) > 1e-6


def test_ped_no_overlap_keeps_features():
    # Far-apart classes: no overlap, first == 0, every later step rejected -> PED == SFDA.
    got = metrics.score("ped", features=FAR_FEATURES, source_features=SOURCE, labels=FAR_LABELS)
    assert _rel(got, np_sfda(FAR_FEATURES, FAR_LABELS)) < 1e-8


def test_ped_loop_stops_on_ratio(rng):
    # Overlapping classes whose moves shrink step after step: compare the accepted count and the total
    # move with the literal loop of the reference.
    c, d = 3, 4
    centres = rng.normal(size=(c, d)) * 0.1
    with L.precision_scope():
        total, accepted = ped.ped_moved_centres(jnp.asarray(centres), jnp.ones(c), exit_ratio=0.97)
    moves_ref, first, count = np.zeros_like(centres), None, 0
    cur = centres.copy()
    for step in range(6):
        mv = np.zeros_like(cur)
        for a in range(c):
            for b in range(a + 1, c):
                delta = cur[b] - cur[a]
                dist = np.linalg.norm(delta)
                o = max(0.6 * 2 - dist, 0)
                s = min(0.005 * o, o)
                mv[a] -= s * delta / dist
                mv[b] += s * delta / dist
        change = np.abs(mv).sum()
        if step == 0:
            first = change
        elif not change / first > 0.97:
            break
        cur, moves_ref, count = cur + mv, moves_ref + mv, count + 1
    assert int(accepted) == count and 1 < count < 6
    np.testing.assert_allclose(np.asarray(total), moves_ref, rtol=1e-12, atol=1e-15)


def test_ped_requires_source_features():
    with pytest.raises(ValueError, match="source_features"):
        metrics.score("ped", features=FEATURES, labels=LABELS)
    with pytest.raises(ValueError, match="D="):
        metrics.score("ped", features=FEATURES, source_features=SOURCE[:, :3], labels=LABELS)


# ------------------------------------------------------------------------------------------------
# ETran


def test_etran_components_and_zoo_combination(rng):
    np.testing.assert_allclose(metrics.score_components("etran", features=FEATURES, labels=LABELS), np_etran_components(FEATURES, LABELS), rtol=1e-9)
    zoo = [FEATURES, FEATURES * 0.5 + rng.normal(size=FEATURES.shape), FEATURES[:, ::-1] * 2.0]
    comps = np.stack([np_etran_components(f, LABELS) for f in zoo])
    mm = (comps - comps.min(0)) / (comps.max(0) - comps.min(0))
    expected = 0.15 * mm[:, 0] + 0.85 * mm[:, 1]
    np.testing.assert_allclose(metrics.score_zoo("etran", features=zoo, labels=LABELS), expected, rtol=1e-9, atol=1e-12)


def test_etran_errors():
    with pytest.raises(ValueError, match="at least 200 samples"):
        metrics.score_zoo("etran", features=[FEATURES[:150], FEATURES[:150]], labels=LABELS[:150])
    with pytest.raises(ValueError, match="only defined relative to a zoo"):
        metrics.score("etran", features=FEATURES, labels=LABELS)
    with pytest.raises(ValueError, match="at least 2 models"):
        metrics.score_zoo("etran", features=[FEATURES], labels=LABELS)


# ------------------------------------------------------------------------------------------------
# GBC


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_paper_with_injected_projection(gaussian_type):
    x = (FEATURES - FEATURES.mean(0)) @ PROJECTION
    got = metrics.score("gbc", features=FEATURES, labels=LABELS, projection=PROJECTION, gaussian_type=gaussian_type)
    assert _rel(got, np_gbc_paper(x, LABELS, gaussian_type)) < 1e-9


def test_gbc_model_spider_with_injected_projection():
    x = (FEATURES - FEATURES.mean(0)) @ PROJECTION
    expected = np_gbc_model_spider(x, LABELS)
    assert expected < -1e-3  # non-trivial: the coefficients did not all underflow
    got = metrics.score("gbc", features=FEATURES, labels=LABELS, projection=PROJECTION, convention="model_spider")
    assert _rel(got, expected) < 1e-9


def test_gbc_exact_pca_solvers_agree():
    components, _ = np_pca_components(WIDE, 64)
    expected = np_gbc_paper((WIDE - WIDE.mean(0)) @ components, WIDE_LABELS, "spherical")
    for solver in ("subspace", "eigh"):
        got = metrics.score("gbc", features=WIDE, labels=WIDE_LABELS, pca_solver=solver)
        assert _rel(got, expected) < 1e-6, solver


def test_gbc_errors():
    with pytest.raises(ValueError, match="needs N and D >= 64"):
        metrics.score("gbc", features=FEATURES, labels=LABELS)
    labels = LABELS.copy()
    labels[0] = 9  # a class with a single sample
    with pytest.raises(ValueError, match="fewer than 2 samples"), pytest.warns(UserWarning, match="remapped"):
        metrics.score("gbc", features=FEATURES, labels=labels, projection=PROJECTION)


# ------------------------------------------------------------------------------------------------
# NCTI


def test_ncti_components_match_sklearn_both_lda_paths(one_thread):
    components, variances = np_pca_components(WIDE, 16)
    for scale, svd_path in ((0.3, False), (3.0, True)):  # small variance: eigen solver; large: svd
        features = WIDE * scale
        x = (features - features.mean(0)) @ components
        assert (np.exp(-(variances * scale**2)[:32].sum()) < 1e-10) == svd_path
        expected = sk_ncti_components(x, WIDE_LABELS, variances * scale**2)
        got = metrics.score_components("ncti", features=features, labels=WIDE_LABELS, projection=components, num_components=16)
        np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_ncti_default_randomized_pca_is_close_to_exact(one_thread):
    components, variances = np_pca_components(WIDE, 64)
    exact = sk_ncti_components((WIDE - WIDE.mean(0)) @ components, WIDE_LABELS, variances)
    # The default randomized PCA is close to the exact one (the reference's own spread is ~0.3 %).
    np.testing.assert_allclose(metrics.score_components("ncti", features=WIDE, labels=WIDE_LABELS), exact, rtol=3e-3)


def test_ncti_nuclear_norm_redoes_grams_whose_eigenvalues_are_not_finite(rng, monkeypatch):
    """A GPU eigensolver returned NaN for some per-class Grams; those are redone with an SVD."""
    blocks = rng.standard_normal((3, 7, 4))
    grams = np.swapaxes(blocks, 1, 2) @ blocks
    expected = np.linalg.svd(blocks, compute_uv=False).sum(axis=1)
    real_eigvalsh = jnp.linalg.eigvalsh

    def failing_eigvalsh(a):  # like the GPU: the second matrix of the batch comes back NaN
        values = real_eigvalsh(a)
        return values.at[1].set(jnp.nan) if values.ndim == 2 else values

    with L.precision_scope():
        np.testing.assert_allclose(ncti._nuclear_norm_from_gram(jnp.asarray(grams)), expected, rtol=1e-10)
        monkeypatch.setattr(jnp.linalg, "eigvalsh", failing_eigvalsh)
        assert np.isnan(np.asarray(jnp.linalg.eigvalsh(jnp.asarray(grams)))[1]).all()
        for fn in (ncti._nuclear_norm_from_gram, jax.jit(ncti._nuclear_norm_from_gram)):
            np.testing.assert_allclose(fn(jnp.asarray(grams)), expected, rtol=1e-10)


def test_ncti_zoo_combination(rng):
    components = rng.normal(size=(4, 3))
    mm = (components - components.min(0)) / (components.max(0) - components.min(0))
    np.testing.assert_allclose(ncti.combine_ncti(components), mm[:, 0] + mm[:, 1] - mm[:, 2], rtol=1e-12)
    tied = components.copy()
    tied[:, 1] = 2.0  # a component equal for every model carries no ranking information
    np.testing.assert_allclose(ncti.combine_ncti(tied), mm[:, 0] - mm[:, 2], rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# PCA helper


@pytest.mark.parametrize("solver", ["subspace", "randomized"])
def test_top_pca_iterative_solvers(solver):
    # WIDE has a decaying spectrum without a gap at k (the hard case for iterative solvers).
    k = 24
    components, variances = np_pca_components(WIDE, k)
    with L.precision_scope():
        projected, got_var, got_comp = jax.jit(lambda a: _pca.top_pca(a, k, solver=solver, num_iterations=4))(jnp.asarray(WIDE))
    tol = 1e-3 if solver == "randomized" else 1e-9
    np.testing.assert_allclose(np.asarray(got_var), variances, rtol=tol)
    overlap = np.linalg.svd(components.T @ np.asarray(got_comp), compute_uv=False)
    assert overlap.min() > 1 - (1e-2 if solver == "randomized" else 1e-8)
    np.testing.assert_allclose(np.asarray(projected), (WIDE - WIDE.mean(0)) @ np.asarray(got_comp), atol=1e-9)


def test_orthonormalize_fast_spans_the_same_space_and_falls_back_when_rank_deficient():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(300, 40)) * np.logspace(0, 3, 40)  # columns scaled over 3 decades: cond ~1e3
    deficient = np.concatenate([a[:, :30], a[:, :10]], axis=1)  # 10 repeated columns: rank 30
    with L.precision_scope():
        for matrix in (a, deficient):
            q = np.asarray(jax.jit(_pca.orthonormalize_fast)(jnp.asarray(matrix)))
            np.testing.assert_allclose(q.T @ q, np.eye(40), atol=1e-10)
            # every column of the input lies in the span of q
            residual = matrix - q @ (q.T @ matrix)
            assert np.max(np.abs(residual)) < 1e-9 * np.max(np.abs(matrix))
        # Cholesky–QR on the full-rank input: the unique QR with a positive diagonal of R
        q = np.asarray(_pca.orthonormalize_fast(jnp.asarray(a)))
        householder, r = np.linalg.qr(a)
        np.testing.assert_allclose(q, householder * np.sign(np.diag(r)), atol=1e-10)
        assert np.isnan(np.asarray(_pca._cholesky_qr_rows_pass(jnp.asarray(deficient).T))).any()  # hence the fallback


# ------------------------------------------------------------------------------------------------
# N-LEEP: (a) LEEP on responsibilities, (b) EM and k-means from identical starts vs scikit-learn,
# (c) the end-to-end score statistically over seeds.

def _nleep_task(rng):
    n, d, c = 240, 16, 3
    labels = rng.permutation(np.arange(n) % c)
    features = rng.normal(size=(c, d))[labels] * 0.8 + rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) / 4 + np.eye(d))
    return features, labels


def np_leep(probs: np.ndarray, labels: np.ndarray, eps: float = 0.0) -> float:
    one_hot = np.eye(labels.max() + 1)[labels]
    joint = probs.T @ one_hot / len(labels)
    expected = probs @ (joint / (probs.mean(0) + eps)[:, None]) + eps
    return float(np.mean(np.log(expected[np.arange(len(labels)), labels])) + (np.log(1 + eps) if eps else 0.0))


def _sklearn_start(x: np.ndarray, labels: np.ndarray, k: int, covariance_type: str):
    """Parameters of sklearn's GaussianMixture initialisation from hard labels (its _initialize)."""
    resp = np.eye(k)[labels]
    nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ x / nk[:, None]
    if covariance_type == "full":
        covs = np.stack([((x - means[j]).T * resp[:, j]) @ (x - means[j]) / nk[j] + 1e-6 * np.eye(x.shape[1]) for j in range(k)])
        precisions = np.linalg.inv(covs)
    else:
        precisions = 1.0 / (resp.T @ x**2 / nk[:, None] - means**2 + 1e-6)
    return resp, dict(weights_init=nk / nk.sum(), means_init=means, precisions_init=precisions)



def _ot_task(rng, ns=30, nt=60, d=5):
    source = rng.normal(size=(ns, d)) * 2.0
    source_labels = np.arange(ns) % 4
    target = rng.normal(size=(nt, d)) * 2.0 + 0.5
    target_labels = rng.permutation(np.arange(nt) % 3)
    return source, source_labels, target, target_labels


def np_exact_otce(source, source_labels, target, target_labels):
    """(W, CE) with the exact plan from a dense transportation LP (SciPy HiGHS)."""
    from scipy.optimize import linprog

    ns, nt = len(source), len(target)
    cost = ((source[:, None, :] - target[None, :, :]) ** 2).sum(-1)
    a_eq = np.vstack([np.kron(np.eye(ns), np.ones((1, nt))), np.kron(np.ones((1, ns)), np.eye(nt))])
    b_eq = np.concatenate([np.full(ns, 1 / ns), np.full(nt, 1 / nt)])
    plan = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs").x.reshape(ns, nt)
    joint = np.zeros((source_labels.max() + 1, target_labels.max() + 1))
    for i in range(ns):
        for j in range(nt):
            joint[source_labels[i], target_labels[j]] += plan[i, j]
    marginal = joint.sum(1, keepdims=True)
    mask = joint > 0
    ce = -np.sum(joint[mask] * np.log((joint / marginal)[mask]))
    return float((plan * cost).sum()), float(ce)



def np_pactran_gauss(features, labels, lda_factor=1.0, seed=0):
    """Google's calculate_pac_gauss (spec §7c) with SciPy L-BFGS-B and the analytic gradient."""
    import scipy.optimize

    x = features - features.mean(0)
    n, d = x.shape
    c = labels.max() + 1
    y = np.eye(c)[labels]
    kd, ldas2 = d * c, lda_factor * n

    def unpack(theta):
        theta = theta.reshape(d + 1, c)
        return theta[:d], theta[d:]

    def loss(theta):
        w, b = unpack(theta)
        logits = x @ w + b
        log_q = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        return np.sum(y * (np.log(y + 1e-10) - log_q)) / n + 0.5 * np.sum(w**2) / ldas2

    def grad(theta):
        w, b = unpack(theta)
        g = (_softmax(x @ w + b) - y) / n
        return np.concatenate([x.T @ g + w / ldas2, g.sum(0, keepdims=True)]).ravel()

    w0 = np.random.default_rng(seed).normal(size=(d, c)) * 0.03
    theta = scipy.optimize.minimize(
        loss, np.concatenate([w0, np.zeros((1, c))]).ravel(), method="L-BFGS-B", jac=grad, options=dict(maxiter=100), tol=1e-6
    ).x
    w, b = unpack(theta)
    p = _softmax(x @ w + b)
    h = np.concatenate([(x**2).T @ (p - p**2) + 1 / ldas2, (p - p**2).sum(0, keepdims=True)])
    sigma2_inv = h.sum() * ldas2 / kd + 1e-10
    return -(loss(theta) + 0.5 * kd / ldas2 * (100 * lda_factor / d) * np.log(sigma2_inv))



NLEEP_FEATURES, NLEEP_LABELS = _nleep_task(np.random.default_rng(21))


def test_nleep_leep_on_responsibilities(one_thread):
    from sklearn.mixture import GaussianMixture

    from mspider_jax.metrics import leep as leep_lib

    resp = GaussianMixture(9, random_state=0).fit(NLEEP_FEATURES).predict_proba(NLEEP_FEATURES)
    with L.precision_scope():
        args = (jnp.asarray(resp), jnp.asarray(NLEEP_LABELS), 3)
        paper = float(leep_lib.leep_from_probabilities(*args, "paper"))
        spider = float(leep_lib.leep_from_probabilities(*args, "model_spider"))
    assert _rel(paper, np_leep(resp, NLEEP_LABELS)) < 1e-12
    assert _rel(spider, np_leep(resp, NLEEP_LABELS, eps=1e-10)) < 1e-12


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_em_matches_sklearn_from_identical_start(covariance_type, one_thread):
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from mspider_jax.metrics import _gmm

    x, k = NLEEP_FEATURES, 8
    start_labels = KMeans(k, n_init=1, random_state=0).fit(x).labels_
    resp0, init = _sklearn_start(x, start_labels, k, covariance_type)
    reference = GaussianMixture(k, covariance_type=covariance_type, random_state=0, **init).fit(x)
    with L.precision_scope():
        fit = jax.jit(lambda a, r: _gmm.fit_gmm(a, r, covariance_type=covariance_type))
        params, info = fit(jnp.asarray(x), jnp.asarray(resp0))
        resp = np.asarray(_gmm.responsibilities(jnp.asarray(x), params))
    assert int(info.num_iterations) == reference.n_iter_ > 2
    assert _rel(float(info.lower_bound), reference.lower_bound_) < 1e-9
    np.testing.assert_allclose(resp, reference.predict_proba(x), atol=1e-8)
    np.testing.assert_allclose(np.asarray(params.means), reference.means_, rtol=1e-8, atol=1e-10)


def test_gmm_small_dim_m_step_equals_the_per_component_scatter(rng):
    from mspider_jax.metrics import _gmm

    n, d, k = 300, 6, 30
    x = rng.normal(size=(n, d)) + 3.0  # an offset: the one-GEMM form must cancel it exactly enough
    resp = _softmax(rng.normal(size=(n, k)))
    means = rng.normal(size=(k, d))  # any means, not only the weighted ones
    with L.precision_scope():
        args = (jnp.asarray(x), jnp.asarray(resp), jnp.asarray(means))
        np.testing.assert_allclose(
            np.asarray(jax.jit(_gmm._scatter_small_dim)(*args)), np.asarray(jax.jit(_gmm._scatter_dense)(*args)), rtol=1e-10, atol=1e-10
        )


def test_gmm_sparse_m_step_is_exact_when_responsibilities_are_sparse(rng):
    from mspider_jax.metrics import _gmm

    n, d, k = 300, 6, 30
    x = rng.normal(size=(n, d))
    means = rng.normal(size=(k, d))
    hard = np.zeros((n, k))
    hard[np.arange(n), rng.integers(0, k, n)] = 0.7
    hard[np.arange(n), rng.integers(0, k, n)] += 0.3  # at most 2 non-zeros per row
    soft = _softmax(rng.normal(size=(n, k)))  # every entry non-zero
    with L.precision_scope():
        for resp, exact in ((hard, True), (soft, False)):
            args = (jnp.asarray(x), jnp.asarray(resp), jnp.asarray(means))
            sparse, flag = jax.jit(_gmm._scatter_sparse)(*args)
            assert bool(flag) == exact
            if exact:
                np.testing.assert_allclose(np.asarray(sparse), np.asarray(jax.jit(_gmm._scatter_dense)(*args)), rtol=1e-10, atol=1e-12)


def test_kmeans_matches_sklearn_from_identical_centres(one_thread):
    from sklearn.cluster import KMeans

    from mspider_jax.metrics import _gmm

    x, centres = NLEEP_FEATURES, NLEEP_FEATURES[:6]
    reference = KMeans(6, init=centres, n_init=1).fit(x)
    with L.precision_scope():
        labels, got = jax.jit(_gmm.kmeans)(jnp.asarray(x), jnp.asarray(centres))
        seeds = np.asarray(jax.jit(lambda a, k: _gmm.kmeans_plus_plus(a, 6, k))(jnp.asarray(x), jax.random.key(1)))
    np.testing.assert_array_equal(np.asarray(labels), reference.labels_)
    np.testing.assert_allclose(np.asarray(got), reference.cluster_centers_, rtol=1e-10)
    assert len({tuple(r) for r in seeds}) == 6 and all((x == r).all(1).any() for r in seeds)  # K distinct points


def test_nleep_pca_rule_and_component_counts(one_thread):
    from sklearn.decomposition import PCA

    from mspider_jax.metrics import nleep

    variance = PCA().fit(NLEEP_FEATURES).explained_variance_
    assert nleep.kept_components(variance, 0.8) == PCA(0.8).fit(NLEEP_FEATURES).n_components_
    assert nleep.num_mixture_components("paper", 10_000, 100) == 500
    assert nleep.num_mixture_components("model_spider", 10_000, 100) == 1000
    assert nleep.num_mixture_components("model_spider", 300, 100) == 60  # min(C, 0.2N) wins when N < 10C


def test_nleep_end_to_end_within_sklearn_band(one_thread):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    reference = []
    for seed in range(4):
        x = PCA(0.8).fit_transform(NLEEP_FEATURES)
        resp = GaussianMixture(15, random_state=seed).fit(x).predict_proba(x)
        reference.append(np_leep(resp, NLEEP_LABELS))
    ours = [metrics.score("nleep", features=NLEEP_FEATURES, labels=NLEEP_LABELS, key=jax.random.key(seed)) for seed in range(4)]
    spread = np.sqrt(np.var(reference) / 4 + np.var(ours) / 4)
    assert abs(np.mean(ours) - np.mean(reference)) < 3 * spread + 1e-3
    assert np.std(ours) > 0  # the key matters (k-means++ seeding), deterministically:
    assert ours[2] == metrics.score("nleep", features=NLEEP_FEATURES, labels=NLEEP_LABELS, key=jax.random.key(2))


def test_nleep_zero_padded_projection_is_exact(one_thread):
    """Padding the PCA scores with zero columns (shared compiles across k) leaves the score unchanged."""
    from mspider_jax.metrics import nleep

    projected = nleep.pca_to_variance_ratio(jnp.asarray(NLEEP_FEATURES, jnp.float32))
    padded = nleep.pca_to_variance_ratio(jnp.asarray(NLEEP_FEATURES, jnp.float32), pad_to_multiple=16)
    assert padded.shape[1] % 16 == 0 and padded.shape[1] > projected.shape[1]
    np.testing.assert_array_equal(padded[:, : projected.shape[1]], projected)
    for covariance_type in ("full", "diag"):
        scores = [nleep.nleep_from_projection(x, jnp.asarray(NLEEP_LABELS), jax.random.key(3), num_classes=3,
                                              num_components=15, covariance_type=covariance_type)
                  for x in (projected, padded)]
        np.testing.assert_allclose(float(scores[1]), float(scores[0]), rtol=1e-4)  # float32 E-step sums


def test_nleep_errors():
    with pytest.raises(ValueError, match="K=300 components needs N >= K"):
        metrics.score("nleep", features=NLEEP_FEATURES, labels=NLEEP_LABELS, num_components=300)
    with pytest.raises(ValueError, match="covariance_type"):
        metrics.score("nleep", features=NLEEP_FEATURES, labels=NLEEP_LABELS, covariance_type="tied")


# ------------------------------------------------------------------------------------------------
# OTCE

OT_SOURCE, OT_SOURCE_LABELS, OT_TARGET, OT_TARGET_LABELS = _ot_task(np.random.default_rng(31))
OT_INPUTS = dict(features=OT_TARGET, labels=OT_TARGET_LABELS, source_features=OT_SOURCE, source_labels=OT_SOURCE_LABELS)


def test_otce_exact_solver_and_conventions():
    from mspider_jax.metrics import _ot

    w_ref, ce_ref = np_exact_otce(OT_SOURCE, OT_SOURCE_LABELS, OT_TARGET, OT_TARGET_LABELS)
    assert _rel(metrics.score("otce", **OT_INPUTS, solver="exact"), -ce_ref) < 1e-8
    assert _rel(metrics.score("otce", **OT_INPUTS, solver="exact", convention="model_spider"), w_ref + ce_ref) < 1e-8
    # The host solver's LP path (used when replication to lcm(Ns, Nt) points is too large).
    cost = ((OT_SOURCE[:, None] - OT_TARGET[None, :]) ** 2).sum(-1)
    lp_plan, assignment_plan = _ot.exact_plan_numpy(cost, max_size=10), _ot.exact_plan_numpy(cost)
    assert _rel((lp_plan * cost).sum(), w_ref) < 1e-8 and _rel((assignment_plan * cost).sum(), w_ref) < 1e-8


def np_permutation_otce(source, source_labels, target, target_labels):
    """(W, CE) for Ns == Nt: the exact plan with uniform marginals is a permutation / N (Birkhoff),
    here from SciPy's assignment solver on the float64 cost."""
    from scipy.optimize import linear_sum_assignment

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    cost = (source**2).sum(1)[:, None] + (target**2).sum(1)[None, :] - 2 * source @ target.T
    rows, cols = linear_sum_assignment(cost)
    n = len(source)
    joint = np.zeros((source_labels.max() + 1, target_labels.max() + 1))
    np.add.at(joint, (source_labels[rows], target_labels[cols]), 1.0 / n)
    marginal = joint.sum(1, keepdims=True)
    mask = joint > 0
    return float(cost[rows, cols].mean()), float(-np.sum(joint[mask] * np.log((joint / marginal)[mask])))


def test_otce_exact_solver_at_sizes_whose_callback_runs_on_a_worker_thread():
    # At these sizes XLA's CPU runtime ran the host solver's callback on a worker thread, where the
    # thread-local x64 of `score` is off: a float64 callback result then failed JAX's dtype check.
    from mspider_jax.metrics import synthetic

    for n in (600, 1000):
        task = synthetic.make_task(n, 64, 5, 10, seed=1, num_source_samples=n)
        inputs = dict(features=task.features, labels=task.labels, source_features=task.source_features,
                      source_labels=task.source_labels)
        w_ref, ce_ref = np_permutation_otce(task.source_features, task.source_labels, task.features, task.labels)
        assert _rel(metrics.score("otce", **inputs, solver="exact"), -ce_ref) < 1e-6
        assert _rel(metrics.score("otce", **inputs, solver="exact", convention="model_spider"), w_ref + ce_ref) < 1e-6


def test_otce_sinkhorn_matches_exact_w():
    from mspider_jax.metrics import otce

    w_ref, ce_ref = np_exact_otce(OT_SOURCE, OT_SOURCE_LABELS, OT_TARGET, OT_TARGET_LABELS)
    with L.precision_scope():
        w, ce = jax.jit(otce.otce_components, static_argnames=("num_classes", "num_source_classes"))(
            **{k: jnp.asarray(v) for k, v in OT_INPUTS.items()}, num_classes=3, num_source_classes=4
        )
    assert _rel(float(w), w_ref) < 1e-3
    assert _rel(float(ce), ce_ref) < 0.1  # entropic plans spread mass: CE is only close


def test_rounded_map_joint_by_hand():
    from mspider_jax.metrics import otce

    # Ns = 3 > Nt = 2: each source point goes, with mass 1/3, to its most-coupled target point.
    plan = jnp.array([[0.30, 0.03], [0.01, 0.32], [0.20, 0.14]])
    joint = otce.rounded_map_joint(plan, jnp.array([0, 1, 1]), jnp.array([1, 0]), 2, 2)
    np.testing.assert_allclose(np.asarray(joint), [[0, 1 / 3], [1 / 3, 1 / 3]], atol=1e-7)
    # Ns = 2 < Nt = 3: each target point comes, with mass 1/3, from its most-coupled source point.
    joint = otce.rounded_map_joint(plan.T, jnp.array([1, 0]), jnp.array([0, 1, 1]), 2, 2)
    np.testing.assert_allclose(np.asarray(joint), [[0, 1 / 3], [1 / 3, 1 / 3]], atol=1e-7)
    # The reduction-based argmax agrees with jnp.argmax, first index on ties, along both axes.
    ties = jnp.asarray(np.random.default_rng(0).integers(0, 3, size=(40, 30)).astype(np.float32))
    for axis in (0, 1):
        np.testing.assert_array_equal(otce._first_argmax(ties, axis), jnp.argmax(ties, axis=axis))
    # Ns = Nt: the source side is rounded (rows), so the target marginal may be uneven.
    joint = otce.rounded_map_joint(jnp.array([[0.3, 0.2], [0.25, 0.25]]), jnp.array([0, 1]), jnp.array([0, 1]), 2, 2)
    np.testing.assert_allclose(np.asarray(joint), [[0.5, 0], [0.5, 0]], atol=1e-7)


def _replicated_assignment_ce(source, source_labels, target, target_labels):
    """CE of the exact plan with uniform marginals: SciPy's assignment on points replicated to
    lcm(Ns, Nt) copies (each source point lcm/Ns times, each target point lcm/Nt times)."""
    from scipy.optimize import linear_sum_assignment

    ns, nt = len(source), len(target)
    size = ns * nt // np.gcd(ns, nt)
    rows, cols = np.repeat(np.arange(ns), size // ns), np.repeat(np.arange(nt), size // nt)
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    cost = ((source[rows] ** 2).sum(1)[:, None] + (target[cols] ** 2).sum(1)[None, :] - 2 * source[rows] @ target[cols].T)
    r, c = linear_sum_assignment(cost)
    joint = np.zeros((source_labels.max() + 1, target_labels.max() + 1))
    np.add.at(joint, (source_labels[rows[r]], target_labels[cols[c]]), 1.0 / size)
    marginal = joint.sum(1, keepdims=True)
    mask = joint > 0
    return float(-np.sum(joint[mask] * np.log((joint / marginal)[mask])))


@pytest.mark.parametrize("num_source, num_target", [(1000, 1000), (500, 1000), (1000, 500)])
def test_otce_default_ce_is_close_to_the_exact_plans(num_source, num_target):
    # With 50 classes the entropic plan spreads mass across label blocks (CE 12-15 % too high here);
    # the map rounded from it gives the exact plan's CE to ~1 % (0.1-1.1 % measured).
    from mspider_jax.metrics import synthetic

    task = synthetic.make_task(num_target, 128, 50, 200, seed=7, num_source_samples=num_source)
    inputs = dict(features=task.features, labels=task.labels, source_features=task.source_features,
                  source_labels=task.source_labels)
    exact_ce = _replicated_assignment_ce(task.source_features, task.source_labels, task.features, task.labels)
    assert _rel(-metrics.score("otce", **inputs), exact_ce) < 0.02
    assert -metrics.score("otce", **inputs, ce_plan="entropic") > 1.1 * exact_ce
    # Each convention's default Sinkhorn settings: "paper" reads CE only (coarser ε and tolerance),
    # "model_spider" reads W, which stays within 1e-3 of the exact optimum.
    from mspider_jax.metrics import _ot, otce

    assert metrics.score("otce", **inputs) == metrics.score("otce", **inputs, eps_rel=otce.CE_EPS_REL, tol=otce.CE_TOL)
    spider = metrics.score("otce", **inputs, convention="model_spider")
    assert spider == metrics.score("otce", **inputs, convention="model_spider", eps_rel=otce.EPS_REL, tol=otce.TOL)
    cost = np.asarray(otce.squared_distances(jnp.asarray(task.source_features),
                                             jnp.asarray(task.features)), np.float64)
    exact_w = float(np.sum(_ot.exact_plan_numpy(cost) * cost))
    assert abs(spider - (exact_w + exact_ce)) < 1e-3 * exact_w


def test_sinkhorn_kernel_form_follows_the_log_domain_iterates():
    from mspider_jax.metrics import _ot, otce

    rng = np.random.default_rng(5)
    source, target = rng.normal(size=(120, 16)).astype(np.float32), rng.normal(size=(200, 16)).astype(np.float32) + 0.3
    with L.precision_scope():
        cost = otce.squared_distances(jnp.asarray(source), jnp.asarray(target))
        # small ε: many absorptions (|log u| > ABSORB_LOG) and ε stages on the way
        options = dict(eps_rel=1e-3, tol=1e-4)
        plan, iterations = jax.jit(lambda c: _ot.sinkhorn(c, **options))(cost)
        reference, reference_iterations = jax.jit(lambda c: _ot.sinkhorn_log_domain(c, **options))(cost)
    plan, reference = np.asarray(plan, np.float64), np.asarray(reference, np.float64)
    # the same iterations up to float32 rounding, which can end a stage one iteration apart
    assert abs(int(iterations) - int(reference_iterations)) <= 0.02 * int(reference_iterations) and int(iterations) < 5000
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 200, rtol=1e-4)  # columns exact after each update
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 120, rtol=1e-2)
    np.testing.assert_allclose(plan, reference, atol=1e-3 * reference.max())
    np.testing.assert_allclose((plan * np.asarray(cost)).sum(), (reference * np.asarray(cost)).sum(), rtol=1e-5)


def test_otce_cost_is_accurate_in_float32_with_a_large_offset():
    # Features far from the origin: |x|² ~ 6e7 while distances are ~130, so float32 norms of the raw
    # rows would lose the distances entirely; centring by the target mean keeps them to ~1e-6.
    from mspider_jax.metrics import otce

    rng = np.random.default_rng(11)
    source = (rng.normal(size=(150, 64)) + 1000.0).astype(np.float32)
    target = (rng.normal(size=(90, 64)) + 1000.0).astype(np.float32)
    exact = ((source.astype(np.float64)[:, None, :] - target.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    with L.precision_scope():
        cost = np.asarray(jax.jit(otce.squared_distances)(jnp.asarray(source), jnp.asarray(target)))
    assert cost.dtype == np.float32
    assert np.max(np.abs(cost - exact)) < 1e-5 * np.mean(exact)


def test_otce_target_subsampling():
    full = metrics.score("otce", **OT_INPUTS)
    sub = [metrics.score("otce", **OT_INPUTS, max_target_samples=40, key=jax.random.key(s)) for s in (0, 0, 1)]
    assert sub[0] == sub[1] and sub[0] != sub[2] and sub[0] != full


def test_otce_subset_drawn_on_the_host_is_the_one_the_metric_draws(monkeypatch):
    # score/score_zoo draw the target subset on the host and send only its rows; the result must equal
    # the metric function drawing it itself from every row (same key), for default and given keys.
    from mspider_jax.metrics import _dispatch, otce

    n = OT_TARGET.shape[0]
    source_labels = OT_SOURCE_LABELS.astype(np.int32)
    for key, options in [(None, {"max_target_samples": 40}), (jax.random.key(3), {"max_target_samples": 40}), (None, {})]:
        with L.precision_scope():
            direct = float(jax.jit(otce.otce, static_argnames=("num_classes", "num_source_classes", "max_target_samples"))(
                features=jnp.asarray(OT_TARGET), labels=jnp.asarray(OT_TARGET_LABELS.astype(np.int32)),
                source_features=jnp.asarray(OT_SOURCE), source_labels=jnp.asarray(source_labels),
                num_classes=int(OT_TARGET_LABELS.max()) + 1, num_source_classes=int(source_labels.max()) + 1,
                key=jax.random.key(0) if key is None else key, **options))
        assert metrics.score("otce", **OT_INPUTS, key=key, **options) == pytest.approx(direct, rel=1e-6)
        zoo = metrics.score_zoo("otce", features=[OT_TARGET, OT_TARGET], labels=OT_TARGET_LABELS,
                                source_features=[OT_SOURCE, OT_SOURCE], source_labels=OT_SOURCE_LABELS, key=key, **options)
        np.testing.assert_allclose(zoo, direct, rtol=1e-6)
    # Only the subset's rows reach the compiled metric.
    seen = []
    evaluate = _dispatch._evaluate
    monkeypatch.setattr(_dispatch, "_evaluate", lambda spec, prepared, arrays: seen.append(
        (arrays["features"].shape, prepared.shared["labels"].shape)) or evaluate(spec, prepared, arrays))
    metrics.score("otce", **OT_INPUTS, max_target_samples=40)
    assert seen == [((40, OT_TARGET.shape[1]), (40,))] and n > 40
    # Validation still reads every row: a NaN outside the subset is reported.
    bad = dict(OT_INPUTS, features=OT_TARGET.copy())
    bad["features"][n - 1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        metrics.score("otce", **bad, max_target_samples=40)


def test_otce_errors():
    with pytest.raises(ValueError, match="source_labels"):
        metrics.score("otce", features=OT_TARGET, labels=OT_TARGET_LABELS, source_features=OT_SOURCE)
    with pytest.raises(ValueError, match="source_features"):
        metrics.score("otce", features=OT_TARGET, labels=OT_TARGET_LABELS, source_labels=OT_SOURCE_LABELS)
    with pytest.raises(ValueError, match="solver"):
        metrics.score("otce", **OT_INPUTS, solver="emd")
    with pytest.raises(ValueError, match="ce_plan"):
        metrics.score("otce", **OT_INPUTS, ce_plan="argmax")


# ------------------------------------------------------------------------------------------------
# PACTran-Gauss


def test_pactran_gauss_matches_scipy_lbfgs():
    expected = np_pactran_gauss(FEATURES, LABELS)
    got = metrics.score("pactran_gauss", features=FEATURES, labels=LABELS)
    assert _rel(got, expected) < 2e-3


# ------------------------------------------------------------------------------------------------
# Cross-cutting: score_zoo (vmap) vs loop, jit vs eager, float32 vs float64.


@pytest.mark.parametrize("name", ["ped", "otce"])  # (SFDA runs inside PED)
def test_score_zoo_equals_loop(rng, name):
    if name == "otce":
        base, extra = OT_INPUTS["features"], {"source_labels": OT_SOURCE_LABELS}
        labels, source = OT_TARGET_LABELS, OT_SOURCE
    else:
        base, extra, labels, source = FEATURES, {}, LABELS, SOURCE
    zoo = [base, base * 0.7 + rng.normal(size=base.shape)]
    sources = [source, source * 0.7] if name != "sfda" else None
    kwargs = {"source_features": sources} if sources else {}
    values = metrics.score_zoo(name, features=zoo, labels=labels, **kwargs, **extra)
    loop = [
        metrics.score(name, features=f, labels=labels, **({"source_features": sources[m]} if sources else {}), **extra)
        for m, f in enumerate(zoo)
    ]
    assert loop[0] == metrics.score(name, features=base, labels=labels, **({"source_features": source} if sources else {}), **extra)
    np.testing.assert_allclose(values, loop, rtol=1e-7)


def test_jit_and_eager_agree():
    jitted = metrics.score("gbc", features=FEATURES, labels=LABELS, projection=PROJECTION)
    with jax.disable_jit():
        eager = metrics.score("gbc", features=FEATURES, labels=LABELS, projection=PROJECTION)
    assert _rel(eager, jitted) < 1e-9


def test_float32_default_matches_float64():
    # (SFDA's float32 path is checked against its float32-rounding reference above.)
    features = FEATURES + 5.0
    f64 = metrics.score("gbc", features=features, labels=LABELS, projection=PROJECTION)
    f32 = metrics.score("gbc", features=features.astype(np.float32), labels=LABELS, projection=PROJECTION)
    assert _rel(f32, f64) < 1e-4


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_gmm_mahalanobis_handles_one_dimensional_projections(dim):
    """N-LEEP's PCA can keep a single component (d = 1); the blocked triangular E-step split at
    h = d // 2 = 0 must still give ‖(x_i - μ_k)ᵀU_k‖² (it raised ZeroDivisionError before)."""
    from mspider_jax.metrics import _gmm

    rng = np.random.default_rng(dim)
    x, means = rng.normal(size=(9, dim)), rng.normal(size=(6, dim))
    prec_chol = np.triu(rng.normal(size=(6, dim, dim))) + 3.0 * np.eye(dim)
    expected = np.array([[np.sum(((x[i] - means[k]) @ prec_chol[k]) ** 2) for k in range(6)]
                         for i in range(9)])
    with L.precision_scope():
        got = _gmm._mahalanobis_full(jnp.asarray(x), jnp.asarray(prec_chol), jnp.asarray(means))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)
