"""Evaluation of any method on a whole split: per-input outputs, routing, counts and the curve.

A jitted step runs the method's ``decide`` on each batch (eval-mode BatchNorm) and keeps, per
input, the option scores, the classifier's class and top probability, and the method's estimate
of each expert's P(right) if it makes one; they are fetched once per split. Routing
then sees the whole split at once, on the host: each input goes to its highest-scored available
option (the classifier, and the experts whose annotation the manifest has: an expert without one
is not there to ask), the classifier's score shifted by the operating point's offset
(``l2d.evaluation.operating_point``), or, with workload bounds enforced, the split is assigned
as a whole (``l2d.workload``). Counts are summed over the split and divided once at the end
(``l2d.evaluation.metrics``).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.special import log_softmax

from l2d.annotations import MISSING
from l2d.config import EvaluationOptions, RuntimeOptions
from l2d.data.manifest import SplitRecords
from l2d.data.pipeline import eval_batches
from l2d.errors import L2DError
from l2d.evaluation.accuracy_coverage import AccuracyCoverageCurve, accuracy_coverage_curve
from l2d.evaluation.calibration import bin_counts
from l2d.evaluation.operating_point import with_offset
from l2d.methods.base import Method
from l2d.preprocess import normalise
from l2d.workload import assign_with_bounds, share_bounds


def make_predict_step(
    graphdef: nnx.GraphDef, *, method: Method, channel_mean: jax.Array, channel_std: jax.Array,
    replicated: jax.sharding.Sharding,
) -> Callable:
    """Build ``step(state, batch) -> decide_on_images(...)``, jitted, its output ``replicated``
    over the devices the batch is sharded over."""

    def step(state, batch):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return decide_on_images(model, method, batch["image"], channel_mean, channel_std)

    return jax.jit(step, out_shardings=replicated)


def decide_on_images(model, method: Method, images: jax.Array, channel_mean: jax.Array,
                     channel_std: jax.Array) -> dict[str, jax.Array]:
    """``{"scores": [B, K + 1], "class_prediction": [B], "class_confidence": [B]}`` of uint8
    images, and ``"expert_correct": [B, K]`` where the method estimates it, the model in eval
    mode; traced inside the jitted steps of evaluation and of a trained system."""
    decision = method.decide(model, normalise(images, channel_mean, channel_std))
    # In float32 whatever the compute dtype: bfloat16 would merge distinct scores.
    outputs = {"scores": decision.scores.astype(jnp.float32),
               "class_prediction": jnp.argmax(decision.class_logits, axis=-1).astype(jnp.int32),
               "class_confidence": jnp.max(decision.class_probabilities, axis=-1).astype(
                   jnp.float32)}
    if decision.expert_correct is not None:
        outputs["expert_correct"] = decision.expert_correct.astype(jnp.float32)
    return outputs


def available_options(expert_labels: np.ndarray) -> np.ndarray:
    """bool ``[N, K + 1]``: the experts whose annotation exists, then the classifier (always)."""
    present = np.asarray(expert_labels) != MISSING
    return np.concatenate([present, np.ones((present.shape[0], 1), bool)], axis=1)


def route(scores: np.ndarray, available: np.ndarray,
          share_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The chosen option per input ``[N]``: the argmax of the available options' scores, or,
    given ``share_bounds`` (lo, hi), the assignment of the whole split that maximises the summed
    log-probabilities (the scores' softmax over the available options) within the bounds."""
    masked = np.where(available, scores, -np.inf)
    if share_bounds is None:
        return np.argmax(masked, axis=1)
    return assign_with_bounds(log_softmax(masked, axis=1), *share_bounds,
                              available=available)


def system_predictions(chosen: np.ndarray, class_prediction: np.ndarray,
                       expert_labels: np.ndarray) -> np.ndarray:
    """The system's label per input: the chosen expert's annotation, or the classifier's class
    when the classifier (the last option) is chosen."""
    num_experts = expert_labels.shape[1]
    expert_label = np.take_along_axis(
        expert_labels, np.minimum(chosen, num_experts - 1)[:, None], axis=1)[:, 0]
    return np.where(chosen == num_experts, class_prediction, expert_label)


@dataclasses.dataclass(frozen=True)
class SplitEvaluation:
    counts: dict[str, np.ndarray]  # See ``tally``; ``l2d.evaluation.metrics.summarise`` reads them.
    curve: AccuracyCoverageCurve
    chosen: np.ndarray  # int [N]: the option each input went to (K: the classifier).


def tally(chosen, class_prediction, labels, expert_labels, *, num_classes: int,
          class_confidence=None, expert_correct=None) -> dict[str, np.ndarray]:
    """Counts over a split (every argument per input): the system's, the classifier's and each
    expert's right answers, the inputs routed to each option, by true class, and the
    calibration bins (``l2d.evaluation.calibration``) of the classifier's top probability and of
    the estimated P(expert right), where given, over the inputs each expert annotated."""
    options = expert_labels.shape[1] + 1
    correct = system_predictions(chosen, class_prediction, expert_labels) == labels
    routed = np.eye(options)[chosen]
    present = expert_labels != MISSING
    calibration = {}
    if class_confidence is not None:
        calibration["clf_calibration"] = bin_counts(class_confidence, class_prediction == labels)
    if expert_correct is not None:
        experts_right = expert_labels == labels[:, None]
        calibration["expert_calibration"] = np.stack([
            bin_counts(expert_correct[:, k], experts_right[:, k], present[:, k])
            for k in range(options - 1)])
    return {**calibration,
        "samples": np.float64(labels.size),
        "system_correct": np.float64(correct.sum()),
        "clf_correct": np.float64((class_prediction == labels).sum()),
        "expert_correct": (expert_labels == labels[:, None]).sum(0).astype(np.float64),
        # Inputs with each expert's annotation: an expert alone is measured on those.
        "expert_present": present.sum(0).astype(np.float64),
        "routed": routed.sum(0),
        "routed_correct": (routed * correct[:, None]).sum(0),
        "class_routed": np.eye(num_classes)[labels].T @ routed,
    }


def evaluate_outputs(scores, class_prediction, labels, expert_labels, *, num_classes: int,
                     share_bounds=None, class_confidence=None, expert_correct=None,
                     offset: float = 0.0) -> SplitEvaluation:
    """Route a split's inputs, ``offset`` added to the classifier's scores, and count; the curve
    moves inputs between the classifier and its best available expert (see
    ``l2d.evaluation.accuracy_coverage``). The curve is that of the method's own scores, so its
    points and their offsets do not depend on ``offset``: the point routed is the one whose
    offset is ``offset``."""
    available = available_options(expert_labels)
    chosen = route(with_offset(scores, offset), available, share_bounds)
    masked = np.where(available, scores, -np.inf)
    best_expert = np.argmax(masked[:, :-1], axis=1)
    best_label = np.take_along_axis(expert_labels, best_expert[:, None], axis=1)[:, 0]
    # An input no expert annotated has margin +inf: the classifier keeps it at every offset.
    curve = accuracy_coverage_curve(
        margin=masked[:, -1].astype(np.float64) - np.max(masked[:, :-1], axis=1),
        clf_correct=class_prediction == labels, deferred_correct=best_label == labels)
    counts = tally(chosen, class_prediction, labels, expert_labels, num_classes=num_classes,
                   class_confidence=class_confidence, expert_correct=expert_correct)
    return SplitEvaluation(counts, curve, chosen)


def enforced_bounds(evaluation: EvaluationOptions, num_options: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """The (lo, hi) shares a whole test split or batch is assigned under with
    ``--test-workload enforce``, or None for the scores' argmax."""
    if evaluation.test_workload != "enforce":
        return None
    return share_bounds(evaluation.min_share, evaluation.max_share, num_options)


def check_test_workload(evaluation: EvaluationOptions, split: SplitRecords) -> None:
    """With ``--test-workload enforce``, L2DError before any training or evaluation when the
    split's annotations cannot meet the bounds (e.g. a minimum share for an expert who
    annotated fewer inputs)."""
    bounds = enforced_bounds(evaluation, split.num_experts + 1)
    if bounds is None:
        return
    try:
        assign_with_bounds(np.zeros((split.num_samples, split.num_experts + 1)), *bounds,
                           available=available_options(split.expert_labels))
    except L2DError as error:
        raise L2DError(f"{split.groundtruth_path}: --test-workload enforce: {error}") from None


def predict_split(predict_step, state, split: SplitRecords, images, *, batch_size: int,
                  runtime: RuntimeOptions, parallel) -> dict[str, np.ndarray]:
    """The outputs of ``decide_on_images`` for every input of ``split``, in manifest order
    (each process feeding its rows of every batch)."""
    batches = eval_batches(split, images, batch_size=batch_size,
                           prefetch_size=runtime.prefetch_size, num_threads=runtime.num_threads,
                           shard=parallel.shard)
    # Fetched once at the end: no host sync per batch. The padding rows come last.
    outputs = parallel.fetch([predict_step(state, parallel.put_batch(batch))
                              for batch in batches])
    return {name: np.concatenate([out[name] for out in outputs])[:split.num_samples]
            for name in outputs[0]}


def evaluate_predictions(per_input: dict[str, np.ndarray], split: SplitRecords, *,
                         num_classes: int, evaluation: EvaluationOptions,
                         offset: float = 0.0) -> SplitEvaluation:
    """``evaluate_outputs`` of ``predict_split``'s outputs on ``split``."""
    return evaluate_outputs(per_input["scores"], per_input["class_prediction"], split.labels,
                            split.expert_labels, num_classes=num_classes,
                            share_bounds=enforced_bounds(evaluation, split.num_experts + 1),
                            class_confidence=per_input["class_confidence"],
                            expert_correct=per_input.get("expert_correct"), offset=offset)


def evaluate_split(predict_step, state, split: SplitRecords, images, *, num_classes: int,
                   batch_size: int, runtime: RuntimeOptions, evaluation: EvaluationOptions,
                   parallel, offset: float = 0.0) -> SplitEvaluation:
    """Route every input of ``split``, ``offset`` added to the classifier's scores, and count."""
    per_input = predict_split(predict_step, state, split, images, batch_size=batch_size,
                              runtime=runtime, parallel=parallel)
    return evaluate_predictions(per_input, split, num_classes=num_classes,
                                evaluation=evaluation, offset=offset)
