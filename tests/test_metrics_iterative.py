"""Tests of the iterative / projection transferability metrics (metrics part 2): N-LEEP, OTCE,
PACTran-Gauss, GBC, SFDA, NCTI, ETran, PED.

Expected values are independent float64 NumPy/SciPy re-derivations written from the spec
(/work/shared/specs/metrics.md §5-§10), or scikit-learn / SciPy solvers used as references (LDA,
GaussianMixture, L-BFGS-B, exact assignment), on tiny inputs.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from mspider_jax import metrics
from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _pca, etran, gbc, ncti, ped, sfda


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
# SFDA


def test_sfda_matches_reference_float64(rng):
    features, labels = _task(rng, n=150, d=10, c=4)
    expected = np_sfda(features, labels)
    got = metrics.score("sfda", features=features, labels=labels)
    assert 0 < got <= 1
    assert _rel(got, expected) < 1e-8


def test_sfda_float32_default_call_and_offset(rng):
    # ReLU-like offset features in float32: class-centring keeps the float32 Gram accurate.
    features, labels = _task(rng, n=200, d=16, c=5, offset=20.0)
    f32 = features.astype(np.float32)
    expected = np_sfda(f32, labels, round_to=np.float32)
    assert _rel(metrics.score("sfda", features=f32, labels=labels), expected) < 1e-4


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


def test_ped_matches_reference(rng):
    features, labels = _task(rng, n=120, d=8, c=4, sep=0.6)
    source = rng.normal(size=(50, 8)) * 1.5 + 0.3
    expected = np_ped(features, source, labels)
    got = metrics.score("ped", features=features, source_features=source, labels=labels)
    assert _rel(got, expected) < 1e-8
    # The repulsion really moved the classes: PED differs from SFDA on the raw features.
    assert abs(got - np_sfda(features, labels)) > 1e-6


def test_ped_no_overlap_keeps_features(rng):
    # Far-apart classes: no overlap, first == 0, every later step rejected -> PED == SFDA.
    features, labels = _task(rng, n=80, d=6, c=3, sep=50.0)
    source = rng.normal(size=(30, 6))
    got = metrics.score("ped", features=features, source_features=source, labels=labels)
    assert _rel(got, np_sfda(features, labels)) < 1e-8


def test_ped_loop_stops_on_ratio(rng):
    # Strongly overlapping classes: moves shrink step after step; compare the accepted count with
    # the literal loop of the reference.
    c, d = 3, 4
    centres = rng.normal(size=(c, d)) * 0.1
    radii = np.ones(c)
    with L.precision_scope():
        total, accepted = ped.ped_moved_centres(jnp.asarray(centres), jnp.asarray(radii), exit_ratio=0.97)
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


def test_ped_requires_source_features(rng):
    features, labels = _task(rng)
    with pytest.raises(ValueError, match="source_features"):
        metrics.score("ped", features=features, labels=labels)
    with pytest.raises(ValueError, match="D="):
        metrics.score("ped", features=features, source_features=rng.normal(size=(10, 3)), labels=labels)


# ------------------------------------------------------------------------------------------------
# ETran


def test_etran_components_match_reference(rng):
    features, labels = _task(rng, n=400, d=10, c=4)
    expected = np_etran_components(features, labels)
    got = metrics.score_components("etran", features=features, labels=labels)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_etran_zoo_combination(rng):
    features, labels = _task(rng, n=400, d=10, c=4)
    zoo = [features, features * 0.5 + rng.normal(size=features.shape), features[:, ::-1] * 2.0]
    comps = np.stack([np_etran_components(f, labels) for f in zoo])
    mm = (comps - comps.min(0)) / (comps.max(0) - comps.min(0))
    expected = 0.15 * mm[:, 0] + 0.85 * mm[:, 1]
    np.testing.assert_allclose(metrics.score_zoo("etran", features=zoo, labels=labels), expected, rtol=1e-9, atol=1e-12)


def test_etran_errors(rng):
    features, labels = _task(rng, n=150)
    with pytest.raises(ValueError, match="at least 200 samples"):
        metrics.score_zoo("etran", features=[features, features], labels=labels)
    features, labels = _task(rng, n=400)
    with pytest.raises(ValueError, match="only defined relative to a zoo"):
        metrics.score("etran", features=features, labels=labels)
    with pytest.raises(ValueError, match="at least 2 models"):
        metrics.score_zoo("etran", features=[features], labels=labels)


# ------------------------------------------------------------------------------------------------
# GBC


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_paper_with_injected_projection(rng, gaussian_type):
    features, labels = _task(rng, n=150, d=12, c=4, sep=0.5)
    components, _ = np_pca_components(features, 6)
    x = (features - features.mean(0)) @ components
    expected = np_gbc_paper(x, labels, gaussian_type)
    got = metrics.score("gbc", features=features, labels=labels, projection=components, gaussian_type=gaussian_type)
    assert _rel(got, expected) < 1e-9


def test_gbc_model_spider_with_injected_projection(rng):
    features, labels = _task(rng, n=160, d=10, c=4, sep=0.3)
    components, _ = np_pca_components(features, 5)
    x = (features - features.mean(0)) @ components
    expected = np_gbc_model_spider(x, labels)
    assert expected < -1e-3  # non-trivial: the coefficients did not all underflow
    got = metrics.score("gbc", features=features, labels=labels, projection=components, convention="model_spider")
    assert _rel(got, expected) < 1e-9


def test_gbc_exact_pca_solvers_agree(rng):
    features, labels = _task(rng, n=300, d=96, c=5, sep=0.3)
    components, _ = np_pca_components(features, 64)
    expected = np_gbc_paper((features - features.mean(0)) @ components, labels, "spherical")
    for solver in ("subspace", "eigh"):
        got = metrics.score("gbc", features=features, labels=labels, pca_solver=solver)
        assert _rel(got, expected) < 1e-6, solver


def test_gbc_errors(rng):
    features, labels = _task(rng, n=100, d=40, c=4)
    with pytest.raises(ValueError, match="needs N and D >= 64"):
        metrics.score("gbc", features=features, labels=labels)
    labels = labels.copy()
    labels[0] = 9  # a class with a single sample
    with pytest.raises(ValueError, match="fewer than 2 samples"), pytest.warns(UserWarning, match="remapped"):
        metrics.score("gbc", features=features, labels=labels, num_components=8)


# ------------------------------------------------------------------------------------------------
# NCTI


@pytest.mark.parametrize("scale", [0.3, 3.0])  # small variance: eigen solver; large: svd solver
def test_ncti_components_match_sklearn(rng, scale):
    features, labels = _task(rng, n=200, d=20, c=5, sep=0.7)
    features = features * scale
    components, variances = np_pca_components(features, 16)
    x = (features - features.mean(0)) @ components
    tau = np.exp(-variances[:32].sum())
    assert (tau > 1e-10) == (scale < 1.0)  # both LDA paths are exercised
    expected = sk_ncti_components(x, labels, variances)
    got = metrics.score_components("ncti", features=features, labels=labels, projection=components, num_components=16)
    np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_ncti_default_pca_and_zoo(rng):
    features, labels = _task(rng, n=300, d=80, c=4, sep=0.5)
    zoo = [features, features + rng.normal(size=features.shape) * 2.0]
    exact = []
    for f in zoo:
        components, variances = np_pca_components(f, 64)
        exact.append(sk_ncti_components((f - f.mean(0)) @ components, labels, variances))
    exact = np.stack(exact)
    got_components = np.stack([metrics.score_components("ncti", features=f, labels=labels) for f in zoo])
    # The default randomized PCA is close to the exact one (the reference's own spread is ~0.3 %).
    np.testing.assert_allclose(got_components, exact, rtol=3e-3)
    mm = (exact - exact.min(0)) / (exact.max(0) - exact.min(0))
    expected = mm[:, 0] + mm[:, 1] - mm[:, 2]
    np.testing.assert_allclose(metrics.score_zoo("ncti", features=zoo, labels=labels, pca_solver="eigh"), expected, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# PCA helper


@pytest.mark.parametrize("solver", ["subspace", "randomized", "eigh"])
def test_top_pca_solvers(rng, solver):
    # A decaying spectrum without a gap at k (the hard case for iterative solvers).
    n, d, k = 400, 160, 24
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(d) / 4.0)
    x = (rng.normal(size=(n, d)) * spectrum) @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 3.0
    components, variances = np_pca_components(x, k)
    with L.precision_scope():
        projected, got_var, got_comp = jax.jit(lambda a: _pca.top_pca(a, k, solver=solver, num_iterations=4))(jnp.asarray(x))
    tol = 1e-3 if solver == "randomized" else 1e-9
    np.testing.assert_allclose(np.asarray(got_var), variances, rtol=tol)
    overlap = np.linalg.svd(components.T @ np.asarray(got_comp), compute_uv=False)
    assert overlap.min() > 1 - (1e-2 if solver == "randomized" else 1e-8)
    np.testing.assert_allclose(np.asarray(projected), (x - x.mean(0)) @ np.asarray(got_comp), atol=1e-9)


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


def test_nleep_leep_on_responsibilities(rng):
    from sklearn.mixture import GaussianMixture

    from mspider_jax.metrics import leep as leep_lib

    features, labels = _nleep_task(rng)
    resp = GaussianMixture(9, random_state=0).fit(features).predict_proba(features)
    with L.precision_scope():
        paper = float(leep_lib.leep_from_probabilities(jnp.asarray(resp), jnp.asarray(labels), 3, "paper"))
        spider = float(leep_lib.leep_from_probabilities(jnp.asarray(resp), jnp.asarray(labels), 3, "model_spider"))
    assert _rel(paper, np_leep(resp, labels)) < 1e-12
    assert _rel(spider, np_leep(resp, labels, eps=1e-10)) < 1e-12


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_em_matches_sklearn_from_identical_start(rng, covariance_type):
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from mspider_jax.metrics import _gmm

    features, _ = _nleep_task(rng)
    k = 8
    start_labels = KMeans(k, n_init=1, random_state=0).fit(features).labels_
    resp0, init = _sklearn_start(features, start_labels, k, covariance_type)
    reference = GaussianMixture(k, covariance_type=covariance_type, random_state=0, **init).fit(features)
    with L.precision_scope():
        fit = jax.jit(lambda x, r: _gmm.fit_gmm(x, r, covariance_type=covariance_type))
        params, info = fit(jnp.asarray(features), jnp.asarray(resp0))
        resp = np.asarray(_gmm.responsibilities(jnp.asarray(features), params))
    assert int(info.num_iterations) == reference.n_iter_ > 2
    assert _rel(float(info.lower_bound), reference.lower_bound_) < 1e-9
    np.testing.assert_allclose(resp, reference.predict_proba(features), atol=1e-8)
    np.testing.assert_allclose(np.asarray(params.means), reference.means_, rtol=1e-8, atol=1e-10)


def test_kmeans_matches_sklearn_from_identical_centres(rng):
    from sklearn.cluster import KMeans

    from mspider_jax.metrics import _gmm

    features, _ = _nleep_task(rng)
    centres = features[:6]
    reference = KMeans(6, init=centres, n_init=1).fit(features)
    with L.precision_scope():
        labels, got = jax.jit(_gmm.kmeans)(jnp.asarray(features), jnp.asarray(centres))
    np.testing.assert_array_equal(np.asarray(labels), reference.labels_)
    np.testing.assert_allclose(np.asarray(got), reference.cluster_centers_, rtol=1e-10)
    with L.precision_scope():  # k-means++ picks K distinct data points
        seeds = np.asarray(jax.jit(lambda x, k: _gmm.kmeans_plus_plus(x, 6, k))(jnp.asarray(features), jax.random.key(1)))
    assert len({tuple(r) for r in seeds}) == 6 and all((features == r).all(1).any() for r in seeds)


def test_nleep_pca_rule_and_component_counts(rng):
    from sklearn.decomposition import PCA

    from mspider_jax.metrics import nleep

    features, _ = _nleep_task(rng)
    variance = PCA().fit(features).explained_variance_
    assert nleep.kept_components(variance, 0.8) == PCA(0.8).fit(features).n_components_
    assert nleep.num_mixture_components("paper", 10_000, 100) == 500
    assert nleep.num_mixture_components("model_spider", 10_000, 100) == 1000
    assert nleep.num_mixture_components("model_spider", 300, 100) == 60  # min(C, 0.2N) wins when N < 10C


def test_nleep_end_to_end_within_sklearn_band(rng):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    features, labels = _nleep_task(rng)
    reference = []
    for seed in range(6):
        x = PCA(0.8).fit_transform(features)
        resp = GaussianMixture(15, random_state=seed).fit(x).predict_proba(x)
        reference.append(np_leep(resp, labels))
    ours = [metrics.score("nleep", features=features, labels=labels, key=jax.random.key(seed)) for seed in range(6)]
    spread = np.sqrt(np.var(reference) / 6 + np.var(ours) / 6)
    assert abs(np.mean(ours) - np.mean(reference)) < 3 * spread + 1e-3
    assert np.std(ours) > 0  # the key matters (k-means++ seeding) ...
    assert ours[2] == metrics.score("nleep", features=features, labels=labels, key=jax.random.key(2))  # ... deterministically


def test_nleep_core_jit_vmap_and_errors(rng):
    from mspider_jax.metrics import nleep

    features, labels = _nleep_task(rng)
    with L.precision_scope():
        x = nleep.pca_to_variance_ratio(jnp.asarray(features))
        core = lambda p: nleep.nleep_from_projection(p, jnp.asarray(labels), jax.random.key(0), num_classes=3, num_components=6)  # noqa: E731
        jitted = float(core(x))
        with jax.disable_jit():
            eager = float(core(x))
        batched = np.asarray(jax.vmap(core)(jnp.stack([x, 2.0 * x])))
        looped = [jitted, float(core(2.0 * x))]
    assert _rel(eager, jitted) < 1e-9
    np.testing.assert_allclose(batched, looped, rtol=1e-9)
    with pytest.raises(ValueError, match="K=300 components needs N >= K"):
        metrics.score("nleep", features=features, labels=labels, num_components=300)
    with pytest.raises(ValueError, match="covariance_type"):
        metrics.score("nleep", features=features, labels=labels, covariance_type="tied")


# ------------------------------------------------------------------------------------------------
# OTCE


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


def test_otce_exact_solver_and_conventions(rng):
    from mspider_jax.metrics import otce

    source, source_labels, target, target_labels = _ot_task(rng)
    w_ref, ce_ref = np_exact_otce(source, source_labels, target, target_labels)
    kwargs = dict(features=target, labels=target_labels, source_features=source, source_labels=source_labels)
    paper = metrics.score("otce", **kwargs, solver="exact")
    spider = metrics.score("otce", **kwargs, solver="exact", convention="model_spider")
    assert _rel(paper, -ce_ref) < 1e-8
    assert _rel(spider, w_ref + ce_ref) < 1e-8
    with L.precision_scope():  # the LP path of the host solver (lcm(30, 61) > the assignment limit)
        plan = otce._ot.exact_plan_numpy(((source[:, None] - target[None, :61 - 1]) ** 2).sum(-1), max_size=10)
    np.testing.assert_allclose(plan.sum(0), 1 / 60, atol=1e-12)


def test_otce_sinkhorn_matches_exact_w(rng):
    from mspider_jax.metrics import otce

    source, source_labels, target, target_labels = _ot_task(rng)
    w_ref, ce_ref = np_exact_otce(source, source_labels, target, target_labels)
    with L.precision_scope():
        w, ce = otce.otce_components(
            features=jnp.asarray(target), labels=jnp.asarray(target_labels), source_features=jnp.asarray(source),
            source_labels=jnp.asarray(source_labels), num_classes=3, num_source_classes=4,
        )
    assert _rel(float(w), w_ref) < 1e-3
    assert _rel(float(ce), ce_ref) < 0.1  # entropic plans spread mass: CE is only close


def test_otce_target_subsampling(rng):
    source, source_labels, target, target_labels = _ot_task(rng)
    kwargs = dict(features=target, labels=target_labels, source_features=source, source_labels=source_labels)
    full = metrics.score("otce", **kwargs)
    assert metrics.score("otce", **kwargs, max_target_samples=None) == full  # N <= the cap: all samples
    sub = [metrics.score("otce", **kwargs, max_target_samples=40, key=jax.random.key(s)) for s in (0, 0, 1)]
    assert sub[0] == sub[1] and sub[0] != sub[2] and sub[0] != full


def test_otce_errors(rng):
    source, source_labels, target, target_labels = _ot_task(rng)
    with pytest.raises(ValueError, match="source_labels"):
        metrics.score("otce", features=target, labels=target_labels, source_features=source)
    with pytest.raises(ValueError, match="source_features"):
        metrics.score("otce", features=target, labels=target_labels, source_labels=source_labels)
    with pytest.raises(ValueError, match="solver"):
        metrics.score("otce", features=target, labels=target_labels, source_features=source, source_labels=source_labels, solver="emd")


# ------------------------------------------------------------------------------------------------
# PACTran-Gauss


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


@pytest.mark.parametrize("lda_factor", [1.0, 0.1])
def test_pactran_gauss_matches_scipy_lbfgs(rng, lda_factor):
    features, labels = _task(rng, n=160, d=8, c=4)
    expected = np_pactran_gauss(features, labels, lda_factor)
    got = metrics.score("pactran_gauss", features=features, labels=labels, lda_factor=lda_factor)
    assert _rel(got, expected) < 2e-3


# ------------------------------------------------------------------------------------------------
# Cross-cutting: jit vs eager, score_zoo (vmap) vs loop, float32 vs float64.

_SOURCE = np.random.default_rng(7).normal(size=(40, 12)) + 0.2
_SOURCE_LABELS = np.arange(40) % 5
_ZOO_CASES = {
    "sfda": {},
    "ped": {"source_features": _SOURCE},
    "gbc": {"num_components": 6},
    "pactran_gauss": {},
    "otce": {"source_features": _SOURCE, "source_labels": _SOURCE_LABELS},
}


@pytest.mark.parametrize("name", sorted(_ZOO_CASES))
def test_score_zoo_equals_loop(rng, name):
    features, labels = _task(rng, n=150, d=12, c=4, sep=0.6)
    extra = dict(_ZOO_CASES[name])
    zoo = [features, features * 0.7 + rng.normal(size=features.shape)]
    zoo_extra = {k: [v, v * 0.7] for k, v in extra.items() if k == "source_features"}
    shared = {k: v for k, v in extra.items() if k != "source_features"}
    values = metrics.score_zoo(name, features=zoo, labels=labels, **zoo_extra, **shared)
    loop = [
        metrics.score(name, features=f, labels=labels, **{k: v[m] for k, v in zoo_extra.items()}, **shared)
        for m, f in enumerate(zoo)
    ]
    np.testing.assert_allclose(values, loop, rtol=1e-7)


@pytest.mark.parametrize("name", ["sfda", "ped", "gbc"])
def test_jit_and_eager_agree(rng, name):
    features, labels = _task(rng, n=150, d=12, c=4, sep=0.6)
    extra = {k: v for k, v in _ZOO_CASES[name].items()}
    jitted = metrics.score(name, features=features, labels=labels, **extra)
    with jax.disable_jit():
        eager = metrics.score(name, features=features, labels=labels, **extra)
    assert _rel(eager, jitted) < 1e-9


@pytest.mark.parametrize("name", ["sfda", "ped", "gbc", "pactran_gauss"])
def test_float32_default_matches_float64(rng, name):
    features, labels = _task(rng, n=150, d=12, c=4, sep=0.6, offset=5.0)
    extra = {k: v for k, v in _ZOO_CASES[name].items()}
    f64 = metrics.score(name, features=features, labels=labels, **extra)
    f32 = metrics.score(name, features=features.astype(np.float32), labels=labels, **extra)
    assert _rel(f32, f64) < 1e-4


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
            sparse, flag = _gmm._scatter_sparse(*args)
            assert bool(flag) == exact
            if exact:
                np.testing.assert_allclose(np.asarray(sparse), np.asarray(_gmm._scatter_dense(*args)), rtol=1e-10, atol=1e-12)
