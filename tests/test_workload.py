"""Workload bounds: the KL-projected E-step, the whole-split assignment, and bad bounds."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import raises_one_line

from l2d.cli import main
from l2d.workload import assign_with_bounds, count_bounds, project_log_posterior, share_bounds

LO = np.array([0.0, 0.1, 0.3], np.float32)
HI = np.array([0.25, 0.5, 1.0], np.float32)
project = jax.jit(project_log_posterior)


def random_log_posteriors(seed: int, batch: int = 128, zeros: bool = False) -> jax.Array:
    """Peaked posteriors over two experts and the classifier; with ``zeros``, a third of the
    expert entries exactly 0 (wrong experts without smoothing)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 3)) * rng.uniform(1, 10)
    if zeros:
        logits[:, :2][rng.random((batch, 2)) < 0.3] = -np.inf
    return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))


def kl_rows(log_q: np.ndarray, log_q0: np.ndarray) -> float:
    q = np.exp(log_q)
    with np.errstate(invalid="ignore"):  # -inf - -inf where q = q0 = 0, masked out.
        return float(np.mean(np.sum(np.where(q > 0, q * (log_q - log_q0), 0.0), axis=1)))


@pytest.mark.parametrize("seed,zeros", [(0, False), (1, True), (2, False), (3, True)])
def test_projected_posterior_meets_the_bounds_and_is_closest_in_kl(seed, zeros):
    log_q0 = random_log_posteriors(seed, zeros=zeros)
    log_q = np.asarray(project(log_q0, LO, HI))
    q = np.exp(log_q)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(1), 1, atol=1e-5)
    means = q.mean(0)
    assert np.all(means >= LO - 1e-4) and np.all(means <= HI + 1e-4), means
    np.testing.assert_array_equal(q[np.exp(np.asarray(log_q0)) == 0], 0)
    # Optimality: nudging the multipliers of the solution to any other feasible posterior of
    # the same exponential form does not reduce the KL divergence.
    best = kl_rows(log_q, np.asarray(log_q0))
    rng = np.random.default_rng(seed)
    for _ in range(200):
        shifted = log_q + rng.normal(scale=0.05, size=3)
        shifted = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        other = np.exp(shifted).mean(0)
        if np.all(other >= LO) and np.all(other <= HI):
            assert kl_rows(shifted, np.asarray(log_q0)) >= best - 1e-6


def test_loose_bounds_leave_the_posterior_unchanged():
    log_q0 = random_log_posteriors(4, zeros=True)
    lo, hi = share_bounds(None, None, 3)
    np.testing.assert_allclose(np.exp(project(log_q0, lo, hi)), np.exp(log_q0), atol=1e-6)
    means = np.exp(np.asarray(log_q0)).mean(0)
    # Bounds that the posterior already meets change nothing either.
    np.testing.assert_allclose(np.exp(project(log_q0, means - 0.05, means + 0.05)),
                               np.exp(log_q0), atol=1e-6)


def test_a_zero_maximum_closes_that_option_at_once():
    log_q0 = random_log_posteriors(7)
    lo, hi = np.zeros(3, np.float32), np.array([1.0, 0.0, 1.0], np.float32)
    q = np.exp(np.asarray(project(log_q0, lo, hi)))
    np.testing.assert_array_equal(q[:, 1], 0.0)
    expected = np.exp(np.asarray(log_q0))[:, [0, 2]]
    np.testing.assert_allclose(q[:, [0, 2]], expected / expected.sum(1, keepdims=True),
                               rtol=1e-5)


def test_unreachable_bounds_stay_finite():
    # Expert 0 is wrong on every input (q0 = 0) but must take half of the batch: no posterior
    # of the projected form can; the result is still a finite posterior with q = 0 kept.
    log_q0 = np.array(random_log_posteriors(5))
    log_q0[:, 0] = -np.inf
    log_q = np.asarray(project(jnp.asarray(log_q0), np.array([0.5, 0, 0], np.float32),
                               np.ones(3, np.float32)))
    assert np.isfinite(log_q[:, 1:]).all() and np.all(np.exp(log_q[:, 0]) == 0)


def test_whole_split_assignment_meets_the_bounds_and_is_optimal():
    rng = np.random.default_rng(6)
    scores = np.log(rng.dirichlet(np.ones(3) * 0.3, size=1000))
    chosen = assign_with_bounds(scores, LO, HI)
    low, high = count_bounds(LO, HI, 1000)
    counts = np.bincount(chosen, minlength=3)
    assert np.all(counts >= low) and np.all(counts <= high), counts
    assert np.all(np.abs(counts / 1000 - np.clip(counts / 1000, LO, HI)) <= 1 / 1000)
    # Exact: on 7 inputs the best of every one of the 3^7 assignments.
    small = scores[:7]
    low, high = count_bounds(LO, HI, 7)
    best = max((sum(small[i, k] for i, k in enumerate(choice)), choice)
               for choice in itertools.product(range(3), repeat=7)
               if np.all((np.bincount(choice, minlength=3) >= low)
                         & (np.bincount(choice, minlength=3) <= high)))
    chosen = assign_with_bounds(small, LO, HI)
    assert small[np.arange(7), chosen].sum() == pytest.approx(best[0])


def test_assignment_respects_missing_options_and_says_when_impossible():
    scores = np.zeros((10, 3))
    available = np.ones((10, 3), bool)
    available[:, 0] = np.arange(10) < 3  # Expert 0 annotated 3 inputs.
    chosen = assign_with_bounds(scores, np.array([0.3, 0, 0]), np.ones(3), available)
    assert set(np.flatnonzero(chosen == 0)) == {0, 1, 2}
    raises_one_line(lambda: assign_with_bounds(scores, np.array([0.5, 0, 0]), np.ones(3),
                                               available),
                    "cannot meet the workload bounds")


BASE = ["train", "--train-files", "a.json,b.json", "--train-groundtruth-file", "gt.json",
        "--test-files", "a.json,b.json", "--test-groundtruth-file", "gt.json"]


@pytest.mark.parametrize("flags,message", [
    (["--min-share", "0.5,0.4,0.2"], "--min-share=0.5,0.4,0.2: the minimums add up to 1.1 > 1"),
    (["--max-share", "0.3,0.3,0.3"], "--max-share=0.3,0.3,0.3: the maximums add up to 0.9 < 1"),
    (["--min-share", "0.5,0,0", "--max-share", "0.4,1,1"],
     "--min-share=0.5,0,0: option 0's minimum 0.5 is above its --max-share 0.4"),
    (["--max-share", "0.5,0.5"], "--max-share=0.5,0.5: gives 2 numbers, needs 3"),
    (["--max-share", "1.5,0.5,1"], "--max-share=1.5,0.5,1: every share must be in [0, 1]"),
    (["--test-workload", "enforce"], "--test-workload=enforce: needs --max-share or --min-share"),
    (["--method", "ova", "--max-share", "0.5,0.5,1"],
     "--max-share: --method ova uses the bounds only with --test-workload enforce"),
    (["--missing", "model"], "--missing=model: only with --allow-missing-annotations"),
    (["--missing", "exclude"], "--missing=exclude: only with --allow-missing-annotations"),
    (["--allow-missing-annotations", "--ann-width", "4"],
     "--ann-width: only used with --missing model"),
])
def test_bad_workload_or_missing_flags_are_one_line_errors(capsys, flags, message):
    assert main([*BASE, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
