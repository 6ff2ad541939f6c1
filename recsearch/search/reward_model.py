"""The actor-critic's action-value critic Q(config): a Bayesian linear reward model over the decisions.

Why this model. A search observes tens of trials, not thousands: a neural Q network conditioned on
the whole decision sequence would fit 20 points exactly and say nothing about the next one. A linear
model over one-hot codes of the decisions (one weight per option, plus a bias) is the classical
low-data reward model for combinatorial choices (e.g. BOCS: Bayesian optimization of combinatorial
structures, which pairs Bayesian linear regression with Thompson sampling), and its Gaussian
posterior is exact and closed-form: a mean that says which options pay off and a covariance that
says how sure it is, which is what proposing under uncertainty needs. Decisions that do not affect a
configuration (DCN knobs under a dot interaction) contribute no feature, so they earn no credit.

The prior weight variance and the noise variance are not tuned by hand: each fit picks them from a
small grid by the evidence (the log marginal likelihood of the observed returns), the empirical-Bayes
answer to "how much structure and how much noise do these trials show".

The targets are the controller's shaped returns (normal scores of reward ranks, unit scale), so the
grids are fixed once for every search whatever its metric. numpy only; no state beyond a fit: the
controller refits from its observations, so a resumed search needs nothing extra saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Shaped returns have unit variance: a prior weight variance near 1/(relevant decisions) gives a
# configuration's predicted return a prior scale near 1; the grid spans ~10x either side of that.
PRIOR_VARIANCES = (0.01, 0.03, 0.1, 0.3, 1.0)
NOISE_VARIANCES = (0.05, 0.15, 0.4, 1.0)


def feature_width(sizes: Sequence[int]) -> int:
    """Length of `one_hot`'s vectors: the bias and one slot per option of every varying decision."""
    return 1 + sum(n for n in sizes if n > 1)


def one_hot(choices: Sequence[int], relevant: Sequence[bool], sizes: Sequence[int]) -> np.ndarray:
    """Feature vector of a configuration: a bias, then one indicator per option of every decision
    that matters for it (decisions with a single option carry no information and are left out)."""
    if not (len(choices) == len(relevant) == len(sizes)):
        raise ValueError(f"choices, relevant and sizes differ in length: {len(choices)}, {len(relevant)}, {len(sizes)}")
    x = np.zeros(feature_width(sizes))
    x[0] = 1.0
    offset = 1
    for c, keep, n in zip(choices, relevant, sizes):
        if n <= 1:
            continue
        if not 0 <= c < n:
            raise ValueError(f"option {c} out of range for a decision with {n} options")
        if keep:
            x[offset + c] = 1.0
        offset += n
    return x


@dataclass(frozen=True)
class Posterior:
    """The weights' Gaussian posterior N(mean, cov) and the hyperparameters the evidence chose."""

    mean: np.ndarray
    cov: np.ndarray
    prior_var: float
    noise_var: float
    log_evidence: float

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the expected return of each row of features."""
        mean = features @ self.mean
        var = np.einsum("ij,jk,ik->i", features, self.cov, features)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def sample_weights(self, rng: np.random.Generator) -> np.ndarray:
        """One draw of the weights (Thompson sampling: act as if this draw were the truth)."""
        return rng.multivariate_normal(self.mean, self.cov, method="cholesky")


def _fit_one(x: np.ndarray, y: np.ndarray, prior_var: float, noise_var: float) -> Posterior:
    n, width = x.shape
    precision = np.eye(width) / prior_var + x.T @ x / noise_var
    chol = np.linalg.cholesky(precision)
    cov = np.linalg.inv(precision)
    cov = (cov + cov.T) / 2
    mean = cov @ x.T @ y / noise_var
    # log p(y | prior_var, noise_var), Bishop PRML eq. 3.86 with alpha = 1/prior_var, beta = 1/noise_var
    fit = np.sum((y - x @ mean) ** 2) / (2 * noise_var) + mean @ mean / (2 * prior_var)
    log_det = 2 * np.sum(np.log(np.diag(chol)))
    evidence = (-width / 2 * math.log(prior_var) - n / 2 * math.log(noise_var) - fit - log_det / 2
                - n / 2 * math.log(2 * math.pi))
    return Posterior(mean, cov, prior_var, noise_var, float(evidence))


def fit(features: np.ndarray, targets: np.ndarray) -> Posterior:
    """The posterior under the prior/noise pair with the highest evidence (the prior alone when
    there are no observations yet)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be [n, width] and targets [n], got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("reward model targets must be finite")
    fits = [_fit_one(x, y, a, b) for a in PRIOR_VARIANCES for b in NOISE_VARIANCES]
    return max(fits, key=lambda p: p.log_evidence)
