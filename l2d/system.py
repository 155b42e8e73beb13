"""The deferral system (classifier + gating model) and its two optimizers, built from a config."""

from typing import Any

import jax
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
    """SGD with momentum, masked weight decay and a cosine-decayed learning rate, as the original."""
    schedule = optax.cosine_decay_schedule(config.lr, decay_steps=total_steps)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decays),
        optax.sgd(schedule, momentum=config.momentum),
    )


def build_system(
    config: TrainConfig, *, in_channels: int, num_classes: int, num_experts: int,
    total_steps: int,
) -> tuple[nnx.GraphDef, nnx.State]:
    """Initialise both networks from ``config.seed`` and split (system, optimizers) for jax.jit."""
    rngs = nnx.Rngs(params=config.seed)
    system = DeferralSystem(
        classifier=build_model(config.clf_model, in_channels=in_channels,
                               num_outputs=num_classes, width=config.clf_width, rngs=rngs),
        gate=build_model(config.dfr_model, in_channels=in_channels,
                         num_outputs=num_experts + 1, width=config.dfr_width, rngs=rngs),
    )
    tx = make_optimizer(config, total_steps)
    clf_optimizer = nnx.Optimizer(system.classifier, tx, wrt=nnx.Param)
    gate_optimizer = nnx.Optimizer(system.gate, tx, wrt=nnx.Param)
    return nnx.split((system, clf_optimizer, gate_optimizer))
