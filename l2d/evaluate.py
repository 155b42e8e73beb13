"""Evaluation of any method: a masked, jitted step that sums counts and keeps per-input margins.

Counts are summed on the device over all batches and divided once at the end, so padded rows
(mask 0) never count and no batch is weighted differently from another. For the
accuracy-coverage curve the step also returns, per input, the classifier's score margin over the
best expert and whether the classifier and that expert are right (see ``l2d.accuracy_coverage``).
"""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods import Method
from l2d.preprocess import normalise


def zero_eval_counts(num_classes: int, num_experts: int) -> dict[str, jax.Array]:
    options = num_experts + 1
    return {
        "samples": jnp.zeros((), jnp.float32),
        "system_correct": jnp.zeros((), jnp.float32),
        "clf_correct": jnp.zeros((), jnp.float32),
        "expert_correct": jnp.zeros((num_experts,), jnp.float32),
        # Per option (experts then classifier): inputs routed to it, and correct among them.
        "routed": jnp.zeros((options,), jnp.float32),
        "routed_correct": jnp.zeros((options,), jnp.float32),
        # [C, K + 1]: inputs of each true class routed to each option.
        "class_routed": jnp.zeros((num_classes, options), jnp.float32),
    }


def system_predictions(scores: jax.Array, class_logits: jax.Array,
                       expert_labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Test-time decision: the chosen option ``argmax scores`` and the system's label, ``[B]``.

    The label is the chosen expert's annotation, or the classifier's argmax when the classifier
    (the last option) is chosen.
    """
    chosen = jnp.argmax(scores, axis=-1)
    num_experts = expert_labels.shape[-1]
    expert_choice = jnp.minimum(chosen, num_experts - 1)
    expert_label = jnp.take_along_axis(expert_labels, expert_choice[:, None], axis=-1)[:, 0]
    prediction = jnp.where(chosen == num_experts, jnp.argmax(class_logits, axis=-1), expert_label)
    return chosen, prediction


def make_eval_step(
    graphdef: nnx.GraphDef, *, method: Method, num_classes: int, channel_mean: jax.Array,
    channel_std: jax.Array, replicated: jax.sharding.Sharding,
) -> Callable:
    """Build ``step(state, counts, batch) -> (counts, per_input)`` (eval-mode BatchNorm, jitted).

    ``per_input`` holds ``margin``, ``clf_correct``, ``deferred_correct`` and ``mask``, each
    ``[B]``. Both outputs stay ``replicated`` over the devices the batch is sharded over.
    """

    def step(state, counts, batch):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        scores, class_logits = method.decide(
            model, normalise(batch["image"], channel_mean, channel_std))
        expert_labels, labels = batch["expert_labels"], batch["label"]
        chosen, prediction = system_predictions(scores, class_logits, expert_labels)
        mask = batch["mask"].astype(jnp.float32)
        correct = (prediction == labels).astype(jnp.float32)
        clf_correct = (jnp.argmax(class_logits, -1) == labels).astype(jnp.float32)
        routed = jax.nn.one_hot(chosen, scores.shape[-1]) * mask[:, None]
        best_expert = jnp.argmax(scores[:, :-1], axis=-1)
        best_expert_label = jnp.take_along_axis(expert_labels, best_expert[:, None], -1)[:, 0]
        per_input = {
            # In float32 whatever the compute dtype: bfloat16 would merge distinct margins.
            "margin": scores[:, -1].astype(jnp.float32)
            - jnp.max(scores[:, :-1], axis=-1).astype(jnp.float32),
            "clf_correct": clf_correct,
            "deferred_correct": (best_expert_label == labels).astype(jnp.float32),
            "mask": mask,
        }
        counts = {
            "samples": counts["samples"] + mask.sum(),
            "system_correct": counts["system_correct"] + (mask * correct).sum(),
            "clf_correct": counts["clf_correct"] + (mask * clf_correct).sum(),
            "expert_correct": counts["expert_correct"]
            + (mask[:, None] * (expert_labels == labels[:, None])).sum(0),
            "routed": counts["routed"] + routed.sum(0),
            "routed_correct": counts["routed_correct"] + (routed * correct[:, None]).sum(0),
            "class_routed": counts["class_routed"]
            + jax.nn.one_hot(labels, num_classes).T @ routed,
        }
        return counts, per_input

    return jax.jit(step, donate_argnums=(1,), out_shardings=(replicated, replicated))
