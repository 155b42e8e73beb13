"""One jitted training step per batch, for any method: its loss, one update, its measurements."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import Method, trainable
from l2d.preprocess import augment, normalise

# Also summed, never logged: steps whose gradients or updated parameters were not finite. A loss
# is computed before its update, so finite losses alone could let NaN weights be checkpointed.
NONFINITE_STEPS = "nonfinite_steps"

# Folded into the seed so that the step keys never coincide with the initialisation keys.
_STEP_STREAM = 1


def zero_train_totals(method: Method) -> dict[str, jax.Array]:
    """The method's measurements, summed over an epoch's steps on the device."""
    return {name: jnp.zeros((), jnp.float32) for name in (*method.measurements, NONFINITE_STEPS)}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def make_train_step(
    graphdef: nnx.GraphDef, *, method: Method, seed: int, augment_images: bool,
    channel_mean: jax.Array, channel_std: jax.Array, replicated: jax.sharding.Sharding,
) -> Callable:
    """Build ``step(state, totals, batch, global_step) -> (state, totals)``, jitted and donating.

    ``state`` is ``nnx.state((model, optimizer))``. The method's loss and its gradient come from
    one forward and one backward pass; the optimizer updates every parameter once; the method's
    measurements are added to on-device totals. Nothing is copied to the host. The new state and
    totals stay ``replicated`` over the devices the batch is sharded over.
    """
    base_key = jax.random.fold_in(jax.random.key(seed), _STEP_STREAM)

    def step(state, totals, batch, global_step):
        model, optimizer = nnx.merge(graphdef, state)
        augment_key, method_key = jax.random.split(jax.random.fold_in(base_key, global_step))
        images = batch["image"]
        if augment_images:
            images = augment(augment_key, images)
        inputs = normalise(images, channel_mean, channel_std)
        grads, measurements = nnx.grad(
            method.loss, argnums=nnx.DiffState(0, trainable(method)), has_aux=True)(
                model, inputs, batch, method_key)
        optimizer.update(model, grads)
        finite = all_finite(grads) & all_finite(nnx.state(model, nnx.Param))
        new_totals = {name: totals[name] + value for name, value in measurements.items()}
        new_totals[NONFINITE_STEPS] = totals[NONFINITE_STEPS] + (~finite).astype(jnp.float32)
        return nnx.state((model, optimizer)), new_totals

    return jax.jit(step, donate_argnums=(0, 1), out_shardings=(replicated, replicated))
