"""The interface every learning-to-defer method implements; nothing outside ``l2d/methods``
knows which method runs.

A method is built as ``Method(options, problem)``: its own options (``l2d.methods.options``)
and the ``Problem`` it is built for.

Notation: C classes, K experts. A method owns its network(s) and its loss; the rest of l2d
(training step, evaluation, checkpoints, tracking, plots) only uses what is declared here:

- ``create_model(rngs)``: the method's networks as one ``nnx.Module``, trained by one optimizer
  over its ``nnx.Param``s (see ``trainable``).
- ``loss(model, inputs, batch, key) -> (loss, measurements)``: the scalar to minimise on one
  training batch (model in training mode) and named scalars to report; the names are exactly
  ``measurements``' keys. ``inputs`` are the normalised (and augmented) images ``[B, H, W, C_in]``;
  ``batch`` holds ``label`` ``[B]`` and ``expert_labels`` ``[B, K]`` (``MISSING`` where an expert
  gave no annotation, with ``--allow-missing-annotations``: the loss must leave that expert's
  terms out for that input, not count it as wrong; ``present`` and ``available_options``
  say which are there); ``key`` is a fresh PRNG key per step for methods that sample.
- ``decide(model, inputs) -> Decision``: per input, the options' scores, the classifier's
  answer and probabilities, and the method's estimate of each expert's P(right), if it has one.

Two optional members, for methods that build on an earlier run (``two_stage``):

- ``trainable``: the ``nnx`` filter of the parameters the optimizer trains (default
  ``nnx.Param``: all of them); see ``trainable``.
- ``warm_start(model, trained_model)``: called once when a new run starts, outside any jit, with
  the initialised model and ``trained_model(run_id, flag) -> (method, model)``, an earlier
  run's (``flag``: the flag that named the run, for errors); it may overwrite parts of
  ``model`` in place.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.annotations import MISSING
from l2d.options import MethodOptions


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a method is built for, besides its own options."""

    # (H, W, C) of the images.
    image_shape: tuple[int, int, int]
    num_classes: int
    num_experts: int
    # Precision of activations and matrix products (``--compute-dtype``).
    compute_dtype: str = "float32"
    # The workload bounds as given (K + 1 shares each, or None); EM's E-step reads them.
    min_share: tuple[float, ...] | None = None
    max_share: tuple[float, ...] | None = None

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)


class Decision(NamedTuple):
    """What a method decides on a batch of inputs (model in eval mode)."""

    # [B, K + 1], higher is preferred, the experts first and the classifier last: the system
    # defers to the expert with the highest score unless the classifier's is higher.
    scores: jax.Array
    # [B, C]: the classifier's answer (its argmax) when it keeps an input.
    class_logits: jax.Array
    # [B, C]: the method's estimate of P(y = c | x) (its top value's calibration is measured).
    class_probabilities: jax.Array
    # [B, K]: the method's estimate of P(expert k is right | x), or None if it makes none.
    expert_correct: jax.Array | None = None


class Method(Protocol):
    """What a method provides; see the module docstring."""

    # The --method name, recorded in the config and in every checkpoint.
    name: ClassVar[str]
    # Training measurements returned by ``loss``: MLflow metric name -> plot title (a subset
    # of the registry's, e.g. EM's annotation loss only with an annotation network).
    measurements: Mapping[str, str]

    def __init__(self, options: MethodOptions, problem: Problem): ...

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss(self, model: Any, inputs: jax.Array, batch: dict[str, jax.Array],
             key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def decide(self, model: Any, inputs: jax.Array) -> Decision: ...


def trainable(method: Method) -> Any:
    """The filter of the parameters that ``method`` trains: its ``trainable``, else all."""
    return getattr(method, "trainable", nnx.Param)


def present(expert_labels: jax.Array) -> jax.Array:
    """bool ``[B, K]``: which annotations exist."""
    return expert_labels != MISSING


def available_options(expert_labels: jax.Array) -> jax.Array:
    """bool ``[B, K + 1]``: the experts whose annotation exists, then the classifier (always):
    the options an input can go to."""
    return jnp.concatenate(
        [present(expert_labels), jnp.ones((expert_labels.shape[0], 1), bool)], axis=-1)


def training_coverage(scores: jax.Array, available: jax.Array | None = None) -> jax.Array:
    """Share of the batch whose highest score, among the ``available`` options (all if None),
    is the classifier's (the last column).

    Computed from the scores of the training forward pass, so it reflects the training-mode
    network (batch-statistics BatchNorm) on augmented images, not the test-time decision.
    """
    if available is not None:
        scores = jnp.where(available, scores, -jnp.inf)
    return jnp.mean(jnp.argmax(scores, axis=-1) == scores.shape[-1] - 1).astype(jnp.float32)


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` in float32, or in float64 if it is: losses are computed in float32 whatever the
    compute dtype (bfloat16 logits), and checked in float64 by the tests."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``[B]``: -log softmax(logits)_y, in float32 (or float64)."""
    log_p = jax.nn.log_softmax(at_least_float32(logits), axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def top_log_probability(logits: jax.Array) -> jax.Array:
    """``[B, 1]``: log max_c softmax(logits)_c, the classifier's score in the baselines that
    compare it with the experts' estimated P(right)."""
    return jnp.max(jax.nn.log_softmax(at_least_float32(logits), axis=-1), axis=-1,
                   keepdims=True)
