"""The trained state of every method: the method's model and one optimizer over all of it."""

import functools
from typing import Any

import jax
import optax
from flax import nnx

from l2d.config import TrainConfig
from l2d.methods import Method


def decays(params: Any) -> Any:
    """Weight-decay mask: convolution and dense kernels only, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum, a cosine-decayed learning rate and, as in the original, weight decay as
    an L2 term added to the gradient (coupled, before momentum) of kernels only."""
    schedule = optax.cosine_decay_schedule(config.lr, decay_steps=total_steps)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decays),
        optax.sgd(schedule, momentum=config.momentum),
    )


def create_state(method: Method, config: TrainConfig, total_steps: int):
    """``(model, optimizer)``: the method's networks, initialised from ``config.seed``."""
    # Threefry keys (JAX's default) draw the same numbers on every platform, so initialisation
    # is a function of the seed alone, on a CPU as on a GPU.
    model = method.create_model(nnx.Rngs(params=jax.random.key(config.seed)))
    return model, nnx.Optimizer(model, make_optimizer(config, total_steps), wrt=nnx.Param)


def build_state(
    method: Method, config: TrainConfig, *, total_steps: int, abstract: bool = False,
) -> tuple[nnx.GraphDef, nnx.State]:
    """``create_state`` split into (graphdef, state) for jax.jit.

    Initialisation runs as one compiled program (one compilation instead of one per parameter
    shape). ``abstract=True`` gives shapes and dtypes only, instantly: the template a checkpoint
    is restored into.
    """
    create = functools.partial(create_state, method, config, total_steps)
    return nnx.split(nnx.eval_shape(create) if abstract else nnx.jit(create)())
