"""Workload bounds: the share of inputs each option (the K experts, then the classifier) may take.

Training (EM's E-step, ``project_log_posterior``): among the posteriors q whose batch means meet
``lo_k <= mean_i q_ik <= hi_k``, take the one closest in KL divergence to the unconstrained
posterior q0. Its form is q_ik proportional to q0_ik exp(a_k - b_k) with multipliers a, b >= 0
(2(K + 1) numbers) that maximise the concave dual

    g(a, b) = -mean_i log sum_k q0_ik exp(a_k - b_k) + a . lo - b . hi,

whose gradient is (lo - m, m - hi), m the batch means of q. Its Hessian's eigenvalues are at most
1 (the variance of a categorical is at most 1/2 per unit vector, doubled by a - b), so projected
gradient ascent with step 1 is safe; Nesterov momentum with adaptive restart makes it fast. All
in log space: entries of q0 that are exactly 0 stay 0 and nothing becomes NaN.

Test time (``assign_with_bounds``): the whole split at once, maximising the summed log-scores of
the chosen options with every option's count between floor(lo_k N) and ceil(hi_k N). That is a
transportation problem; its constraint matrix is totally unimodular, so a simplex vertex of the
linear programme is an integral assignment.
"""

import jax
import jax.numpy as jnp
import numpy as np

from l2d.errors import L2DError

# The dual's stopping rule (largest step of the multipliers) and the iteration cap. A batch
# whose bounds cannot be met (an option with no support, e.g. a minimum share for an expert
# who is wrong on most of the batch) stops at the cap with a finite posterior that misses them.
TOLERANCE = 1e-6
MAX_ITERATIONS = 500


def share_bounds(min_share, max_share, num_options: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64 [K + 1] from the flags' values (None: no bound). In float64 so that
    floor(lo N) and ceil(hi N) are exact for any split size N."""
    lo = np.zeros(num_options) if min_share is None else np.asarray(min_share, np.float64)
    hi = np.ones(num_options) if max_share is None else np.asarray(max_share, np.float64)
    return lo, hi


def _dual_ascent_step(log_q0, lo, hi, state):
    x, x_previous, momentum, iteration, _ = state
    t_next = (1 + jnp.sqrt(1 + 4 * momentum**2)) / 2
    y = x + (momentum - 1) / t_next * (x - x_previous)
    a, b = jnp.split(y, 2)
    means = jnp.mean(jax.nn.softmax(log_q0 + (a - b), axis=-1), axis=0)
    x_new = jnp.maximum(y + jnp.concatenate([lo - means, means - hi]), 0.0)
    # Adaptive restart: drop the momentum when it points against the gradient step.
    restart = jnp.dot(y - x_new, x_new - x) > 0
    step = jnp.max(jnp.abs(x_new - y))
    return x_new, x, jnp.where(restart, 1.0, t_next), iteration + 1, step


def dual_multipliers(log_q0: jax.Array, lo: jax.Array, hi: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """(a - b, iterations): the optimal multipliers' difference ``[K + 1]`` and the iterations
    run. ``log_q0`` ``[B, K + 1]`` may hold -inf where the classifier column is finite."""
    options = log_q0.shape[-1]
    zeros = jnp.zeros(2 * options, jnp.float32)
    initial = (zeros, zeros, jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32),
               jnp.asarray(jnp.inf, jnp.float32))
    x, *_, iterations, _ = jax.lax.while_loop(
        lambda state: (state[3] < MAX_ITERATIONS) & (state[4] > TOLERANCE),
        lambda state: _dual_ascent_step(log_q0, lo, hi, state), initial)
    a, b = jnp.split(x, 2)
    return a - b, iterations


def project_log_posterior(log_q0: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """log q ``[B, K + 1]``: the posterior closest in KL to exp(log_q0) whose batch means lie in
    [lo, hi] (see the module docstring)."""
    log_q0 = log_q0.astype(jnp.float32)
    # A maximum share of 0 is met only with a multiplier of -inf: apply it up front (unless it
    # would leave an input no option at all), rather than approach it for MAX_ITERATIONS.
    closed = jnp.where(hi > 0, log_q0, -jnp.inf)
    log_q0 = jnp.where(jnp.isfinite(closed).any(axis=-1, keepdims=True), closed, log_q0)
    shift, _ = dual_multipliers(log_q0, lo, hi)
    shifted = log_q0 + shift
    return shifted - jax.nn.logsumexp(shifted, axis=-1, keepdims=True)


def count_bounds(lo: np.ndarray, hi: np.ndarray, num_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole-input counts per option: floor(lo N) and ceil(hi N), always feasible when the shares
    are, and each within one input of its share."""
    # The small slack keeps e.g. 0.3 * 10 = 3.0000000000000004 from rounding up.
    return (np.floor(lo * num_inputs + 1e-6).astype(np.int64),
            np.ceil(hi * num_inputs - 1e-6).astype(np.int64))


def assign_with_bounds(log_scores: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       available: np.ndarray | None = None) -> np.ndarray:
    """The chosen option per input ``[N]`` maximising the summed ``log_scores`` ``[N, K + 1]``
    with every option's count within ``count_bounds``. ``available`` ``[N, K + 1]`` (optional)
    rules options out per input. L2DError when no assignment meets the bounds."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_array, vstack

    num_inputs, options = log_scores.shape
    available = np.ones_like(log_scores, bool) if available is None else available
    low, high = count_bounds(np.asarray(lo, np.float64), np.asarray(hi, np.float64), num_inputs)
    # One variable per available (input, option): the share of the input that option takes.
    # With most annotations missing (a crowd) that is a few per input, not K + 1.
    inputs, chosen_options = np.nonzero(available)
    variables = np.arange(inputs.size)
    ones = np.ones(inputs.size)
    each_input_once = csr_array((ones, (inputs, variables)), shape=(num_inputs, inputs.size))
    per_option = csr_array((ones, (chosen_options, variables)), shape=(options, inputs.size))
    result = linprog(
        -np.asarray(log_scores, np.float64)[inputs, chosen_options],
        A_ub=vstack([per_option, -per_option]), b_ub=np.concatenate([high, -low]),
        A_eq=each_input_once, b_eq=np.ones(num_inputs), bounds=(0, 1), method="highs-ds")
    if result.status != 0:
        raise L2DError(f"the {num_inputs} inputs cannot meet the workload bounds "
                       f"(counts between {low.tolist()} and {high.tolist()} per option, with "
                       f"the annotations present): {result.message}")
    shares = np.full((num_inputs, options), -1.0)
    shares[inputs, chosen_options] = result.x
    return np.argmax(shares, axis=1)
