"""The training state of a run: its method, that method's model and one optimizer over all of it.

``method_of`` builds the run's method from its configuration (once the dataset has filled in
the classes and the image shape); ``build_state`` splits ``(model, optimizer)`` for ``jax.jit``.
"""

import functools
from typing import Any

import jax
import optax
from flax import nnx

from l2d.config import TrainConfig, TrainingOptions
from l2d.methods import make_method
from l2d.methods.base import Method, Problem, trainable


def method_of(config: TrainConfig) -> Method:
    """The run's method, for the classes and image shape its configuration records."""
    problem = Problem(image_shape=tuple(config.data.image_shape),
                      num_classes=config.data.num_classes,
                      num_experts=config.data.num_experts,
                      compute_dtype=config.training.compute_dtype,
                      min_share=config.evaluation.min_share,
                      max_share=config.evaluation.max_share)
    return make_method(config.method, config.method_options, problem)


def decays(params: Any) -> Any:
    """Weight-decay mask: convolution and dense kernels only, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate(training: TrainingOptions, total_steps: int) -> optax.Schedule:
    """The learning rate of each step: a cosine decay to 0 over ``total_steps``, or constant."""
    if training.lr_schedule == "constant":
        return optax.constant_schedule(training.lr)
    return optax.cosine_decay_schedule(training.lr, decay_steps=total_steps)


def make_optimizer(training: TrainingOptions, total_steps: int) -> optax.GradientTransformation:
    """The ``--optimizer`` on the ``--lr-schedule``, with weight decay on kernels only.

    SGD (momentum) and Adam take weight decay as an L2 term added to the gradient before the
    update (coupled: the original's SGD, and PyTorch's ``Adam(weight_decay=)``); AdamW decays
    the kernels by lr x ``weight_decay`` beside Adam's update (Loshchilov & Hutter).
    """
    schedule = learning_rate(training, total_steps)
    if training.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=training.weight_decay, mask=decays)
    update = (optax.adam(schedule) if training.optimizer == "adam"
              else optax.sgd(schedule, momentum=training.momentum))
    return optax.chain(optax.add_decayed_weights(training.weight_decay, mask=decays), update)


def create_state(method: Method, training: TrainingOptions, total_steps: int):
    """``(model, optimizer)``: the method's networks, initialised from ``training.seed``; the
    optimizer trains the method's ``trainable`` parameters."""
    # Threefry keys (JAX's default) draw the same numbers on every platform, so initialisation
    # is a function of the seed alone, on a CPU as on a GPU.
    model = method.create_model(nnx.Rngs(params=jax.random.key(training.seed)))
    return model, nnx.Optimizer(model, make_optimizer(training, total_steps), wrt=trainable(method))


def build_state(
    method: Method, training: TrainingOptions, *, total_steps: int, abstract: bool = False,
) -> tuple[nnx.GraphDef, nnx.State]:
    """``create_state`` split into (graphdef, state) for jax.jit.

    Initialisation runs as one compiled program (one compilation instead of one per parameter
    shape). ``abstract=True`` gives shapes and dtypes only, instantly: the template a checkpoint
    is restored into.
    """
    create = functools.partial(create_state, method, training, total_steps)
    return nnx.split(nnx.eval_shape(create) if abstract else nnx.jit(create)())
