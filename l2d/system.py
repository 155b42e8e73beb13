"""The deferral system (classifier + gating model) and its two optimizers, built from a config."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from l2d.config import TrainConfig
from l2d.models import build_model


class DeferralSystem(nnx.Module):
    """A classifier f over C classes and a gating model g over K experts + the classifier.

    The gate's last output (index K) is the classifier, the first K are the experts.
    """

    def __init__(self, classifier: nnx.Module, gate: nnx.Module):
        self.classifier = classifier
        self.gate = gate


def decays(params: Any) -> Any:
    """Weight-decay mask: convolution and dense kernels only, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum, masked weight decay and a cosine-decayed learning rate, as originally."""
    schedule = optax.cosine_decay_schedule(config.lr, decay_steps=total_steps)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decays),
        optax.sgd(schedule, momentum=config.momentum),
    )


def create_system(
    config: TrainConfig, *, in_channels: int, num_classes: int, num_experts: int,
    total_steps: int,
) -> tuple[DeferralSystem, nnx.Optimizer, nnx.Optimizer]:
    """Both networks, initialised from ``config.seed``, and their optimizers."""
    # RBG keys: XLA compiles their sampling in milliseconds where threefry takes about a second
    # per parameter shape on a CPU; initialisation stays a pure function of the seed.
    rngs = nnx.Rngs(params=jax.random.key(config.seed, impl="rbg"))
    dtype = jnp.dtype(config.compute_dtype)
    system = DeferralSystem(
        classifier=build_model(config.clf_model, in_channels=in_channels, dtype=dtype,
                               num_outputs=num_classes, width=config.clf_width, rngs=rngs),
        gate=build_model(config.dfr_model, in_channels=in_channels, dtype=dtype,
                         num_outputs=num_experts + 1, width=config.dfr_width, rngs=rngs),
    )
    tx = make_optimizer(config, total_steps)
    return (system, nnx.Optimizer(system.classifier, tx, wrt=nnx.Param),
            nnx.Optimizer(system.gate, tx, wrt=nnx.Param))


def build_system(
    config: TrainConfig, *, in_channels: int, num_classes: int, num_experts: int,
    total_steps: int, abstract: bool = False,
) -> tuple[nnx.GraphDef, nnx.State]:
    """``create_system`` split into (graphdef, state) for jax.jit.

    Initialisation runs as one compiled program (one compilation instead of one per parameter
    shape). ``abstract=True`` gives shapes and dtypes only, instantly: the template a checkpoint
    is restored into.
    """
    create = functools.partial(create_system, config, in_channels=in_channels,
                               num_classes=num_classes, num_experts=num_experts,
                               total_steps=total_steps)
    return nnx.split(nnx.eval_shape(create) if abstract else nnx.jit(create)())
