"""Evaluation of the deferral system: a masked, jitted step that sums counts, and the metrics.

Counts are summed on the device over all batches and divided once at the end, so padded rows
(mask 0) never count and no batch is weighted differently from another.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l2d import em
from l2d.preprocess import normalise


def zero_eval_counts(num_classes: int, num_experts: int) -> dict[str, jax.Array]:
    components = num_experts + 1
    return {
        "samples": jnp.zeros((), jnp.float32),
        "system_correct": jnp.zeros((), jnp.float32),
        "clf_correct": jnp.zeros((), jnp.float32),
        "expert_correct": jnp.zeros((num_experts,), jnp.float32),
        # Per component z (experts then classifier): inputs routed to it, and correct among them.
        "routed": jnp.zeros((components,), jnp.float32),
        "routed_correct": jnp.zeros((components,), jnp.float32),
        # [C, K + 1]: inputs of each true class routed to each component.
        "class_routed": jnp.zeros((num_classes, components), jnp.float32),
    }


def make_eval_step(
    graphdef: nnx.GraphDef, *, num_classes: int, channel_mean: jax.Array, channel_std: jax.Array,
    replicated: jax.sharding.Sharding,
) -> Callable:
    """Build ``step(state, counts, batch) -> counts`` (eval-mode BatchNorm, jitted; the counts
    stay ``replicated`` over the devices the batch is sharded over)."""

    def step(state, counts, batch):
        system, _, _ = nnx.merge(graphdef, state)
        system.eval()
        inputs = normalise(batch["image"], channel_mean, channel_std)
        clf_logits = system.classifier(inputs)
        gate_logits = system.gate(inputs)
        chosen, prediction = em.system_predictions(gate_logits, clf_logits, batch["expert_labels"])
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        correct = (prediction == labels).astype(jnp.float32)
        routed = jax.nn.one_hot(chosen, gate_logits.shape[-1]) * mask[:, None]
        return {
            "samples": counts["samples"] + mask.sum(),
            "system_correct": counts["system_correct"] + (mask * correct).sum(),
            "clf_correct": counts["clf_correct"]
            + (mask * (jnp.argmax(clf_logits, -1) == labels)).sum(),
            "expert_correct": counts["expert_correct"]
            + (mask[:, None] * (batch["expert_labels"] == labels[:, None])).sum(0),
            "routed": counts["routed"] + routed.sum(0),
            "routed_correct": counts["routed_correct"] + (routed * correct[:, None]).sum(0),
            "class_routed": counts["class_routed"]
            + jax.nn.one_hot(labels, num_classes).T @ routed,
        }

    return jax.jit(step, donate_argnums=(1,), out_shardings=replicated)


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when nothing was counted (e.g. an expert that got no input)."""
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def summarise(counts: dict[str, np.ndarray]) -> dict[str, float]:
    """Turn summed counts into the logged metrics (names as in MLflow)."""
    samples = float(counts["samples"])
    num_experts = counts["expert_correct"].shape[0]
    routed, routed_correct = counts["routed"], counts["routed_correct"]
    metrics = {
        "accuracy": safe_ratio(counts["system_correct"], samples),
        "coverage/test": safe_ratio(routed[-1], samples),
        "clf_accuracy/all": safe_ratio(counts["clf_correct"], samples),
        "clf_accuracy/kept": safe_ratio(routed_correct[-1], routed[-1]),
    }
    for k in range(num_experts):
        metrics[f"expert_{k}/share"] = safe_ratio(routed[k], samples)
        metrics[f"expert_{k}/accuracy_received"] = safe_ratio(routed_correct[k], routed[k])
        metrics[f"expert_{k}/accuracy_alone"] = safe_ratio(counts["expert_correct"][k], samples)
    return metrics


def deferral_table(counts: dict[str, np.ndarray]) -> dict[str, list]:
    """Per true class: how many inputs went to each expert and to the classifier."""
    num_experts = counts["expert_correct"].shape[0]
    columns = [f"expert_{k}" for k in range(num_experts)] + ["classifier"]
    table = counts["class_routed"].astype(np.int64)
    return {
        "class": list(range(table.shape[0])),
        **{column: table[:, j].tolist() for j, column in enumerate(columns)},
    }
