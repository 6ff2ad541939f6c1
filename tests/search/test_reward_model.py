import math

import numpy as np
import pytest

from recsearch.search import reward_model


def test_one_hot_has_a_bias_and_one_slot_per_option_of_varying_relevant_decisions():
    sizes = (3, 1, 2, 4)  # the single-option decision carries no information: no slots
    x = reward_model.one_hot((2, 0, 1, 3), (True, True, True, True), sizes)
    assert x.tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    # an irrelevant decision (a DCN knob under dot) leaves its slots empty
    x = reward_model.one_hot((2, 0, 1, 3), (True, True, False, True), sizes)
    assert x.tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="option 3 out of range for a decision with 3 options"):
        reward_model.one_hot((3, 0, 0, 0), (True,) * 4, sizes)
    with pytest.raises(ValueError, match="differ in length"):
        reward_model.one_hot((0, 0), (True,) * 4, sizes)


def _planted(n, noise, seed):
    """Two decisions of 4 options: the return is +1 for option 3 of the first, -1 for option 0 of
    the second, plus noise."""
    rng = np.random.default_rng(seed)
    choices = rng.integers(0, 4, size=(n, 2))
    x = np.array([reward_model.one_hot(tuple(c), (True, True), (4, 4)) for c in choices])
    y = (choices[:, 0] == 3) * 1.0 - (choices[:, 1] == 0) * 1.0 + rng.normal(0, noise, n)
    return x, y


def test_fit_recovers_planted_effects_and_the_evidence_reads_the_noise():
    x, y = _planted(60, 0.05, seed=0)
    post = reward_model.fit(x, y)
    assert post.noise_var == min(reward_model.NOISE_VARIANCES)  # nearly noiseless data
    mean, std = post.predict(np.array([reward_model.one_hot((3, 1), (True, True), (4, 4)),
                                       reward_model.one_hot((0, 0), (True, True), (4, 4))]))
    assert mean[0] - mean[1] == pytest.approx(2.0, abs=0.25)  # +1 vs -1
    assert np.all(std < 0.35)
    # pure noise: the evidence prefers the largest noise and the smallest prior weight variance
    rng = np.random.default_rng(1)
    noise_only = reward_model.fit(x, rng.normal(0, 1, len(y)))
    assert noise_only.noise_var == max(reward_model.NOISE_VARIANCES)
    assert noise_only.prior_var == min(reward_model.PRIOR_VARIANCES)


def test_uncertainty_is_highest_for_options_never_observed():
    x, y = _planted(40, 0.1, seed=2)
    seen = x[:, 1 + 2] == 0  # drop every observation of option 2 of the first decision
    post = reward_model.fit(x[seen], y[seen])
    _, std = post.predict(np.array([reward_model.one_hot((c, 1), (True, True), (4, 4)) for c in range(4)]))
    assert np.argmax(std) == 2 and std[2] > 2 * max(std[0], std[1], std[3])


def test_with_no_observations_the_posterior_is_the_prior_and_thompson_draws_are_reproducible():
    post = reward_model.fit(np.zeros((0, 5)), np.zeros(0))
    assert np.allclose(post.mean, 0) and np.allclose(post.cov, np.eye(5) * post.prior_var)
    assert math.isfinite(post.log_evidence)
    a = post.sample_weights(np.random.default_rng(7))
    b = post.sample_weights(np.random.default_rng(7))
    assert np.array_equal(a, b) and not np.allclose(a, 0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"features must be \[n, width\] and targets \[n\]"):
        reward_model.fit(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="must be finite"):
        reward_model.fit(np.zeros((2, 2)), np.array([0.0, math.nan]))
