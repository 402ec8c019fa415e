"""Independent NumPy float64 re-derivations of the metrics from the spec (specs/metrics.md).

Test-only code. Each function follows the spec's *reference* form as literally as is affordable at
test sizes (the N×N kernels of LFC, the [N, Cs, C] tensor of LEEP, the per-class slogdets of
TransRate, the gathered [N, E, K] targets and numpy lstsq of EMMS, the thuml-style LogME loop with a
Python `break`), not the matmul/eigen shortcuts of the library, so agreement is evidence.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def hscore(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    f = f.astype(np.float64)
    cov_f = np.cov(f, rowvar=False)  # N-1
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    cov_g = np.cov(g, rowvar=False)
    return np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g)


def leep(logits: np.ndarray, y: np.ndarray, model_spider: bool) -> float:
    p = softmax(logits.astype(np.float64))
    n, c = len(y), y.max() + 1
    onehot = np.eye(c)[y]
    joint = np.mean(p[:, :, None] * onehot[:, None, :], axis=0)  # [Cs, C] via the outer product
    if model_spider:
        pz = p.mean(axis=0) + 1e-10
        cond = joint / pz[:, None]
        eep = p @ cond + 1e-10
        return float(np.mean(np.sum(onehot * (np.log(onehot + 1e-10) + np.log(eep)), axis=1)))
    cond = joint / joint.sum(axis=1, keepdims=True)
    eep = p @ cond
    return float(np.mean(np.log(eep[np.arange(n), y])))


def nce(logits: np.ndarray, y: np.ndarray) -> float:
    z = np.argmax(logits, axis=1)
    ct, cs = y.max() + 1, z.max() + 1
    joint = np.zeros((ct, cs))
    for t, s in zip(y, z):
        joint[t, s] += 1.0 / len(y)
    ps = joint.sum(axis=0, keepdims=True)
    return float(np.sum(joint * np.log(joint / (ps + 1e-20) + 1e-20)))


def logme(f: np.ndarray, targets: np.ndarray) -> float:
    """thuml-style fixed point. targets: [N, K] float (one-hot columns for classification)."""
    f = f.astype(np.float64)
    n, d = f.shape
    if n > d:
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        k = int((s > 1e-10).sum())
        s, vh = s[:k], vh[:k]
        u = f @ vh.T / s
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    evidences = []
    for t in targets.T.astype(np.float64):
        x = u.T @ t
        x2 = x**2
        r0 = t @ t - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            lam = alpha / beta
            gamma = (sigma / (sigma + lam)).sum()
            m2 = (sigma * x2 / (lam + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / lam) ** 2).sum() + r0
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            new_lam = alpha / beta
            evidence = (
                d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
            ) / n
            if abs(new_lam - lam) / lam <= 1e-3:
                break
        evidences.append(evidence)
    return float(np.mean(evidences))


def _pactran_setup(logits, y, alpha):
    p = softmax(logits.astype(np.float64))
    n, c = len(y), y.max() + 1
    onehot = np.eye(c)[y]
    a0 = alpha * onehot.sum(axis=0)[:, None] / n + 1e-10  # [C, 1]
    return p, onehot, a0, np.log(p + 1e-10), n, c


def pactran_dirichlet(logits: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> float:
    p, onehot, a0, log_s, n, c = _pactran_setup(logits, y, alpha)
    q = p.copy()
    for _ in range(10):
        a = a0 + np.einsum("nc,nz->cz", onehot, q)
        logits_q = log_s + onehot @ digamma(a) - digamma(a.sum(axis=0))[None, :]
        log_q = logits_q - np.log(np.exp(logits_q - logits_q.max(1, keepdims=True)).sum(1, keepdims=True)) - logits_q.max(1, keepdims=True)
        q = np.exp(log_q)
    log_c0 = gammaln(a0.sum()) - gammaln(a0).sum()
    log_c = gammaln(a.sum(axis=0)) - gammaln(a).sum(axis=0)
    kl = np.sum(q * (log_q - log_s), axis=0)
    pac = -np.sum(log_c0 - log_c - kl) / (n * c)
    return float(-pac)


def pactran_gamma(logits: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> float:
    p, onehot, a0, log_s, n, c = _pactran_setup(logits, y, alpha)
    beta, bw = 1.0, 1.0
    q = p.copy()
    for _ in range(10):
        a = a0 + np.einsum("nc,nz->cz", onehot, q)
        lw = p @ (a.sum(axis=0) / bw)
        logits_q = log_s + onehot @ (digamma(a) - np.log(bw))
        m = logits_q.max(1, keepdims=True)
        log_q = logits_q - m - np.log(np.exp(logits_q - m).sum(1, keepdims=True))
        q = np.exp(log_q)
    a0_full = np.broadcast_to(a0, a.shape)
    prior = np.sum(gammaln(a0_full) - gammaln(a) + a * np.log(bw) - a0_full * np.log(beta))
    samples = np.sum(np.sum(q * (log_q - log_s), axis=1) + np.log(lw) - 1.0)
    return float(-((prior + samples) / (n * c) + 1.0))


def lfc(f: np.ndarray, y: np.ndarray) -> float:
    f = f.astype(np.float64)
    onehot = np.eye(y.max() + 1)[y]
    ky = onehot @ onehot.T
    ky[ky == 0] = -1.0
    kx = f @ f.T
    kx, ky = kx - kx.mean(), ky - ky.mean()
    return float(np.sum(kx * ky) / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def transrate_coding_rate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    z = f.astype(np.float64) - f.astype(np.float64).mean(axis=0)

    def rate(a):
        n, d = a.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + a.T @ a / (n * eps))[1]

    classes = range(y.max() + 1)
    return float(rate(z) - np.mean([rate(z[y == k]) for k in classes]))


def transrate_official(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    z = f.astype(np.float64) - f.astype(np.float64).mean(axis=0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    cov = z.T @ z / n
    rank = np.linalg.matrix_rank(cov.astype(np.float32))
    rz = np.sum(np.log(1 + np.linalg.svd(cov, compute_uv=False) / eps)) / rank / 2
    rk = 0.0
    for k in range(y.max() + 1):
        zk = z[y == k]
        lam = np.linalg.svd(zk.T @ zk / len(zk), compute_uv=False)
        rk += len(zk) / n * np.sum(np.log(1 + lam / eps)) / rank / 2
    return float(rz - rk)


def sparsemax(z: np.ndarray) -> np.ndarray:
    zs = np.sort(z)[::-1]
    ks = np.arange(1, len(z) + 1)
    cum = np.cumsum(zs)
    k_star = ks[1 + ks * zs > cum].max()
    tau = (cum[k_star - 1] - 1) / k_star
    return np.maximum(z - tau, 0)


def emms(f: np.ndarray, y: np.ndarray, label_emb: np.ndarray | None = None) -> float:
    f = f.astype(np.float64)
    if label_emb is None:
        label_emb = np.eye(y.max() + 1)[:, :, None]
    t = label_emb[y].astype(np.float64).copy()  # [N, E, K]
    n, e, k = t.shape
    for i in range(k):
        t[:, :, i] = (t[:, :, i] - t[:, :, i].mean(axis=0)) / (t[:, :, i].std(axis=0) + 1e-8)
    x = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-8)
    lam = np.full(k, 1.0 / k)
    b = t @ lam
    w = np.linalg.lstsq(x, b, rcond=None)[0]
    lam_t = np.linalg.lstsq(t.reshape(n * e, k), (x @ w).reshape(n * e), rcond=None)[0]
    lam = sparsemax(lam_t)
    t_star = t @ lam
    res = np.sum((x @ w - t_star) ** 2) / n * e
    return float(-res)
