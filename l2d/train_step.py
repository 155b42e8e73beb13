"""One jitted EM step per training batch: E-step, both M-step updates and the batch's metrics."""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from l2d import em
from l2d.config import TrainConfig
from l2d.preprocess import augment, normalise

# Metrics summed over an epoch's steps on the device; divided by the step count once per epoch.
TRAIN_METRICS = ("loss/clf", "loss/dfr", "coverage/train")
# Also summed, never logged: steps whose gradients or updated parameters were not finite. A loss
# is computed before its update, so finite losses alone could let NaN weights be checkpointed.
NONFINITE_STEPS = "nonfinite_steps"

# Folded into the seed so that the step keys never coincide with the initialisation keys.
_STEP_STREAM = 1


def zero_train_totals() -> dict[str, jax.Array]:
    return {name: jnp.zeros((), jnp.float32) for name in (*TRAIN_METRICS, NONFINITE_STEPS)}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def make_train_step(
    graphdef: nnx.GraphDef, *, config: TrainConfig, num_classes: int,
    channel_mean: jax.Array, channel_std: jax.Array, replicated: jax.sharding.Sharding,
) -> Callable:
    """Build ``step(state, totals, batch, global_step) -> (state, totals)``, jitted and donating.

    Each network runs forward exactly once per batch, in training mode: the E-step reuses those
    logits under stop_gradient. The posterior therefore sees batch-statistics BatchNorm, as the
    M-step does; a separate eval-mode pass would cost a third more compute for no EM benefit.
    Training coverage comes from the same gate logits. Nothing is copied to the host.
    The new state and totals stay ``replicated`` over the devices the batch is sharded over.
    """
    base_key = jax.random.fold_in(jax.random.key(config.seed), _STEP_STREAM)

    def step(state, totals, batch, global_step):
        system, clf_optimizer, gate_optimizer = nnx.merge(graphdef, state)
        augment_key, mc_key = jax.random.split(jax.random.fold_in(base_key, global_step))
        images = batch["image"]
        if config.augment:
            images = augment(augment_key, images)
        inputs = normalise(images, channel_mean, channel_std)

        def total_loss(system):
            clf_logits = system.classifier(inputs)
            gate_logits = system.gate(inputs)
            q = em.e_step(
                gate_logits, clf_logits, batch["expert_labels"], batch["label"],
                num_classes=num_classes, smoothing=config.expert_smoothing,
                method=config.e_step, mc_samples=config.mc_samples, key=mc_key,
            )
            clf_loss = em.classifier_loss(
                clf_logits, batch["label"], q, weighting=config.clf_weighting)
            gate_loss = em.gating_loss(gate_logits, q)
            # The two networks share no parameters, so the gradient of the sum gives each network
            # the gradient of its own loss, in one backward pass.
            return clf_loss + gate_loss, (clf_loss, gate_loss, gate_logits)

        grads, (clf_loss, gate_loss, gate_logits) = nnx.grad(
            total_loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(system)
        clf_optimizer.update(system.classifier, grads.classifier)
        gate_optimizer.update(system.gate, grads.gate)

        classifier_index = gate_logits.shape[-1] - 1
        coverage = jnp.mean(jnp.argmax(gate_logits, axis=-1) == classifier_index)
        finite = all_finite(grads) & all_finite(nnx.state(system, nnx.Param))
        new_totals = {
            "loss/clf": totals["loss/clf"] + clf_loss,
            "loss/dfr": totals["loss/dfr"] + gate_loss,
            "coverage/train": totals["coverage/train"] + coverage.astype(jnp.float32),
            NONFINITE_STEPS: totals[NONFINITE_STEPS] + (~finite).astype(jnp.float32),
        }
        return nnx.state((system, clf_optimizer, gate_optimizer)), new_totals

    return jax.jit(step, donate_argnums=(0, 1), out_shardings=(replicated, replicated))
