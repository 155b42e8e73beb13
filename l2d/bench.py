"""``python -m l2d.bench``: how close each method's training step comes to its limit.

Per method, two or three ways to train on one batch, timed in one process on one random batch:

- ``l2d_step``: l2d's own step (``l2d.train_step.make_train_step``; augmentation off, EM with the
  exact E-step): one forward per network in training mode, the method's loss, one backward, one
  optimizer update of the whole model, on-device measurement totals.
- ``limit``: one jitted forward + backward + update of the method's network(s) against FIXED soft
  targets (passed in, not computed): the work every step of the method has to do, minus the work
  that turns labels into targets and the measurements. EM: the classifier's cross-entropy
  weighted by q[:, -1] plus the gate's against q, for a posterior q ``[B, K + 1]``; softmax: the
  soft-target cross-entropy of the one network's C + K outputs; ova: the logistic loss of each of
  the C + K outputs against its target in [0, 1].
- ``unfused`` (EM only): the per-batch sequence of the original implementation
  (cnguyen10/learning_to_defer), rebuilt from its description as separately jitted calls: a gate
  forward for training coverage, a gate forward and a classifier forward for the E-step, the
  E-step posterior, then the update (EM's ``limit`` function, fed the computed q).

A method's variants run round-robin (l2d_step, limit, unfused, l2d_step, ...) after warm-up calls
that compile them, so machine noise spreads over all of them; each timed call ends with
``jax.block_until_ready`` on its outputs and nothing else syncs with the host. Reported per
(config, method): median, min and max seconds per step, and the ratios of medians l2d_step/limit
(target <= 1.05) and, for EM, unfused/l2d_step (target >= 1.15); also, for information, the
median of the per-round ratios. Needs only jax, flax and optax (no MLX-Data, no MLflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from l2d.annotations import MISSING
from l2d.config import TrainConfig
from l2d.methods import METHODS, em, make_method
from l2d.methods.base import Method, Problem
from l2d.parallel import AXIS, DataParallel
from l2d.preprocess import channel_statistics, normalise
from l2d.train_state import build_state
from l2d.train_step import make_train_step, zero_train_totals

VARIANTS = {
    "l2d_step": "l2d's fused step of the method (make_train_step)",
    "limit": "forward + backward + one update of the method's network(s) with fixed soft targets",
    "unfused": "EM only, the original's sequence: gate fwd (coverage), gate fwd + clf fwd, "
               "E-step, update",
}
# Median-ratio targets, each reported where both of its variants run: a method's step must cost
# at most 5% over its limit, and EM's (the target set when its step was fused) at least 15% less
# than the original's sequence. Ratio name -> (numerator, denominator, "max" or "min", bound).
RATIOS = {
    "l2d_step/limit": ("l2d_step", "limit", "max", 1.05),
    "unfused/l2d_step": ("unfused", "l2d_step", "min", 1.15),
}

NUM_CLASSES = 10
# K, unless --experts asks for others.
NUM_EXPERTS = 2
CHANNELS = 3
# Fixed normalisation statistics (l2d computes them from the training set; speed is the same).
CHANNEL_MEAN = (0.5, 0.5, 0.5)
CHANNEL_STD = (0.25, 0.25, 0.25)

@dataclasses.dataclass(frozen=True)
class Models:
    """The networks of a benchmark configuration: EM's two, the surrogate methods' one, and the
    baselines' expert network and rejector (beside the classifier)."""

    clf_model: str
    clf_width: int
    dfr_model: str
    dfr_width: int
    model: str
    width: int
    expert_model: str
    expert_width: int
    rejector_model: str
    rejector_width: int

    def of(self, method: str) -> dict[str, Any]:
        """The fields that ``method`` trains with."""
        return {field: getattr(self, field) for pair in networks(method) for field in pair}


def networks(method: str) -> tuple[tuple[str, str], ...]:
    """The (model, width) options of the networks ``method`` trains (its options declare them)."""
    return METHODS[method].options.networks


PRESETS = {
    # TrainConfig's defaults: the models a CIFAR-10 run trains.
    "default": Models("cnn", 32, "preact_resnet10", 64, "preact_resnet10", 64,
                      "preact_resnet10", 64, "preact_resnet10", 64),
    # CPU-sized networks; EM's classifier (full resolution, no downsampling) dominates EM.
    "small": Models("cnn", 16, "preact_resnet10", 8, "preact_resnet10", 8,
                    "preact_resnet10", 8, "preact_resnet10", 8),
    # The CIFAR-K benchmark's network in every role, trained with Adam (PRESET_TRAINING).
    "netsimple": Models(*("netsimple", 50) * 5),
}
# Options of l2d train a preset trains with, beside its networks (default: TrainConfig's).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "netsimple": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0},
}


def em_limit_loss(networks: em.EMNetworks, inputs, batch, q) -> jax.Array:
    """EM's M-step against a given posterior q ``[B, K + 1]``: the classifier's cross-entropy
    weighted by q(classifier) plus the gate's against q as soft labels."""
    clf_loss = em.classifier_loss(networks.classifier(inputs), batch["label"], q,
                                  weighting="posterior")
    return clf_loss + em.gating_loss(networks.gate(inputs), q)


def soft_target_loss(network: nnx.Module, inputs, batch, targets) -> jax.Array:
    """Cross-entropy of the softmax over the network's C + K outputs against ``targets``
    ``[B, C + K]``."""
    log_p = jax.nn.log_softmax(network(inputs).astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(targets * log_p, axis=-1))


def logistic_target_loss(network: nnx.Module, inputs, batch, targets) -> jax.Array:
    """Binary cross-entropy of each of the network's C + K outputs against its target in
    ``[0, 1]``, summed over outputs."""
    logits = network(inputs).astype(jnp.float32)
    per_output = targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits)
    return jnp.mean(jnp.sum(per_output, axis=-1))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(targets * log_p, axis=-1))


def logistic_of(logits: jax.Array, targets: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return jnp.mean(jnp.sum(targets * jax.nn.softplus(-logits)
                            + (1 - targets) * jax.nn.softplus(logits), axis=-1))


def classes_and_logistic_experts_loss(network, inputs, batch, targets) -> jax.Array:
    """asm's work: a soft cross-entropy of the C class outputs and a logistic loss of each of
    the K expert outputs (targets ``[B, C + K]``)."""
    outputs = network(inputs)
    return (soft_cross_entropy(outputs[:, :NUM_CLASSES], targets[:, :NUM_CLASSES])
            + logistic_of(outputs[:, NUM_CLASSES:], targets[:, NUM_CLASSES:]))


def classifier_loss_of(networks, inputs, targets) -> jax.Array:
    return soft_cross_entropy(networks.classifier(inputs), targets[:, :NUM_CLASSES])


def confidence_limit_loss(networks, inputs, batch, targets) -> jax.Array:
    """The classifier's soft cross-entropy and the expert network's K logistic losses."""
    return classifier_loss_of(networks, inputs, targets) + logistic_of(
        networks.experts(inputs), targets[:, NUM_CLASSES:])


def two_stage_limit_loss(networks, inputs, batch, targets) -> jax.Array:
    """The classifier's soft cross-entropy and the rejector's over its K + 1 outputs."""
    return classifier_loss_of(networks, inputs, targets) + soft_cross_entropy(
        networks.rejector(inputs), targets[:, NUM_CLASSES:])


def selective_limit_loss(networks, inputs, batch, targets) -> jax.Array:
    return classifier_loss_of(networks, inputs, targets)


# Each method's limit: its loss against fixed soft targets, and the number of targets per input
# for K experts.
LIMITS: dict[str, tuple[Callable, Callable[[int], int]]] = {
    "em": (em_limit_loss, lambda k: k + 1),
    "softmax": (soft_target_loss, lambda k: NUM_CLASSES + k),
    "ova": (logistic_target_loss, lambda k: NUM_CLASSES + k),
    "rs": (soft_target_loss, lambda k: NUM_CLASSES + k),
    "asm": (classes_and_logistic_experts_loss, lambda k: NUM_CLASSES + k),
    "confidence": (confidence_limit_loss, lambda k: NUM_CLASSES + k),
    "two_stage": (two_stage_limit_loss, lambda k: NUM_CLASSES + k + 1),
    "selective": (selective_limit_loss, lambda k: NUM_CLASSES),
}


def make_limit_step(graphdef, *, loss: Callable, channel_mean, channel_std,
                    placement=None) -> Callable:
    """``step(state, batch, targets) -> state``, jitted, donating ``state``: the unavoidable work.

    Same merge/split pattern, normalisation, single backward pass and single optimizer as
    ``l2d.train_step``, with ``loss(model, inputs, batch, targets)`` taken against the given soft
    ``targets``. The new state is placed with ``placement`` (a sharding, or None to let XLA
    choose).
    """

    def step(state, batch, targets):
        model, optimizer = nnx.merge(graphdef, state)
        inputs = normalise(batch["image"], channel_mean, channel_std)
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(model, inputs, batch,
                                                                     targets)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    return jax.jit(step, donate_argnums=0, out_shardings=placement)


def make_unfused_step(
    graphdef, *, update: Callable, num_classes: int, channel_mean, channel_std,
    forward_mode: str = "eval",
) -> Callable:
    """``step(state, batch) -> (state, coverage)``: the original's five separate jitted calls.

    ``update`` is EM's ``make_limit_step`` function. The original ran its extra forwards through
    ``prediction_step``, i.e. ``apply(..., train=False)``: BatchNorm with running statistics
    (eval mode), which is the default here; ``forward_mode="train"`` runs them with batch
    statistics instead (their updated statistics are dropped either way, as in the original).
    Metrics bookkeeping (the original merged clu averages eagerly) is left out, so this is a
    lower bound on the original's cost.
    """
    if forward_mode not in ("eval", "train"):
        raise ValueError(f"forward_mode must be 'eval' or 'train', got {forward_mode!r}")

    def forward(part: str):
        def logits(state, images):
            networks = nnx.merge(graphdef, state)[0]
            if forward_mode == "eval":
                networks.eval()
            return getattr(networks, part)(normalise(images, channel_mean, channel_std))
        return logits

    gate_forward, clf_forward = forward("gate"), forward("classifier")

    @jax.jit
    def coverage_forward(state, images):
        gate_logits = gate_forward(state, images)
        return jnp.mean(jnp.argmax(gate_logits, -1) == gate_logits.shape[-1] - 1)

    gate_logits_fn, clf_logits_fn = jax.jit(gate_forward), jax.jit(clf_forward)

    @jax.jit
    def posterior(gate_logits, clf_logits, expert_labels, labels):
        return em.e_step(gate_logits, clf_logits, expert_labels, labels,
                         num_classes=num_classes, smoothing=0.0, method="exact",
                         mc_samples=1, key=None)

    def step(state, batch):
        coverage = coverage_forward(state, batch["image"])
        q = posterior(gate_logits_fn(state, batch["image"]), clf_logits_fn(state, batch["image"]),
                      batch["expert_labels"], batch["label"])
        return update(state, batch, q), coverage

    step.jitted = (coverage_forward, gate_logits_fn, clf_logits_fn, posterior)
    return step


def random_inputs(seed: int, *, batch_size: int, image_size: int, num_targets: int,
                  num_experts: int = NUM_EXPERTS, missing_share: float = 0.0
                  ) -> tuple[dict, Any]:
    """A uint8 image batch with labels and expert labels (``MISSING`` for a random
    ``missing_share`` of them), and fixed soft targets ``[B, num_targets]``."""
    rng = np.random.default_rng(seed)
    expert_labels = rng.integers(0, NUM_CLASSES, (batch_size, num_experts))
    expert_labels[rng.random(expert_labels.shape) < missing_share] = MISSING
    batch = {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, CHANNELS),
                              dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        "expert_labels": expert_labels.astype(np.int32),
    }
    logits = rng.normal(size=(batch_size, num_targets))
    targets = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return batch, targets.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Setup:
    """One method on one set of models, ready to time."""

    method: Method
    graphdef: nnx.GraphDef
    # nnx.state((model, optimizer)) as initialised; every variant trains its own copy.
    state: nnx.State
    # Variant name -> its step, in the order they run.
    steps: dict[str, Callable]
    # The one-device sharding that every input and every new state has, so that no call sees a
    # new placement and compiles again.
    placement: jax.sharding.Sharding
    # The --optimizer every variant updates with.
    optimizer: str


def build(method_name: str, models: Models, *, batch_size: int, seed: int,
          image_size: int = 32, forward_mode: str = "eval",
          training: dict[str, Any] | None = None, num_experts: int = NUM_EXPERTS,
          missing: bool = False) -> Setup:
    """The variants of ``method_name`` on ``models`` for square images of ``image_size`` and
    ``num_experts`` experts (whose annotations may be ``missing``), trained with the options
    ``training`` (e.g. the optimizer) of l2d train.

    ``l2d_step`` is what ``l2d train`` runs for this configuration; EM's ``unfused`` updates
    through the same jitted function as its ``limit``.
    """
    # Augmentation off; EM's E-step exact (its default).
    config = TrainConfig.from_dict({"method": method_name, **models.of(method_name),
                                    **(training or {}), "batch_size": batch_size, "seed": seed,
                                    "augment": False, "allow_missing_annotations": missing})
    method = make_method(method_name, config.method_options,
                         Problem(image_shape=(image_size, image_size, CHANNELS),
                                 num_classes=NUM_CLASSES, num_experts=num_experts))
    graphdef, state = build_state(method, config.training, total_steps=10_000)
    mean, std = channel_statistics(CHANNEL_MEAN, CHANNEL_STD)
    # l2d's data-parallel training keeps the state replicated over a 1-D mesh of its devices;
    # the benchmark's mesh is one device.
    placement = DataParallel(Mesh(np.asarray(jax.devices()[:1]), (AXIS,))).replicated
    steps = {
        "l2d_step": make_train_step(graphdef, method=method, seed=seed,
                                    augment_images=config.data.augment, channel_mean=mean,
                                    channel_std=std, replicated=placement),
        "limit": make_limit_step(graphdef, loss=LIMITS[method_name][0], channel_mean=mean,
                                 channel_std=std, placement=placement),
    }
    if method_name == "em":
        steps["unfused"] = make_unfused_step(graphdef, update=steps["limit"],
                                             num_classes=NUM_CLASSES, channel_mean=mean,
                                             channel_std=std, forward_mode=forward_mode)
    return Setup(method, graphdef, state, steps, placement, config.training.optimizer)


def compilations(steps: dict[str, Callable]) -> int:
    """How many programs the variants' jitted functions have compiled so far."""
    # The unfused step is plain Python over several jitted functions: it lists its own in
    # `jitted`, and its update is the limit's.
    return sum(function._cache_size() for step in steps.values()
               for function in getattr(step, "jitted", (step,)))


def benchmark(
    name: str, method_name: str, models: Models, *, batch_size: int = 128, image_size: int = 32,
    repeats: int = 10, warmup: int = 2, seed: int = 0, forward_mode: str = "eval",
    training: dict[str, Any] | None = None, num_experts: int = NUM_EXPERTS,
    missing_share: float = 0.0, log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Time the variants of one method on one configuration; return its JSON-ready record."""
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    setup = build(method_name, models, batch_size=batch_size, seed=seed,
                  image_size=image_size, forward_mode=forward_mode, training=training,
                  num_experts=num_experts, missing=missing_share > 0)
    steps, placement = setup.steps, setup.placement
    batch, targets = jax.device_put(
        random_inputs(seed, batch_size=batch_size, image_size=image_size,
                      num_targets=LIMITS[method_name][1](num_experts), num_experts=num_experts,
                      missing_share=missing_share), placement)
    # Unused with augmentation off and no sampling, but passed as l2d train passes it.
    global_step = jax.device_put(jnp.asarray(0, jnp.int32), placement)

    def fresh_state():  # Each variant trains its own copy (the steps donate their input).
        return jax.device_put(jax.tree.map(jnp.copy, setup.state), placement)

    carried = {variant: fresh_state() for variant in steps}
    carried["l2d_step"] = (carried["l2d_step"],
                           jax.device_put(zero_train_totals(setup.method), placement))

    # Each run returns (everything to block on, what its next call takes).
    def run_l2d_step(carry):
        outputs = steps["l2d_step"](*carry, batch, global_step)  # (state, totals)
        return outputs, outputs

    def run_limit(carry):
        new_state = steps["limit"](carry, batch, targets)
        return new_state, new_state

    def run_unfused(carry):
        new_state, coverage = steps["unfused"](carry, batch)
        return (new_state, coverage), new_state

    runs = {"l2d_step": run_l2d_step, "limit": run_limit, "unfused": run_unfused}

    def call(variant: str) -> float:
        start = time.perf_counter()
        outputs, carried[variant] = runs[variant](carried[variant])
        jax.block_until_ready(outputs)
        return time.perf_counter() - start

    label = f"{name} {method_name} K={num_experts}"
    log(f"{label}: compiling and warming up ({warmup} call(s) per variant)")
    for _ in range(warmup):
        for variant in steps:
            call(variant)
    compiled = compilations(steps)
    times: dict[str, list[float]] = {variant: [] for variant in steps}
    for index in range(repeats):
        for variant in steps:
            times[variant].append(call(variant))
        log(f"{label}: repeat {index + 1}/{repeats}: "
            + ", ".join(f"{v} {times[v][-1]:.4f} s" for v in steps))
    if compilations(steps) != compiled:
        raise RuntimeError(f"{label}: a variant compiled again while being timed "
                           f"({compiled} -> {compilations(steps)} programs)")

    stats = {v: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                 "times_s": t} for v, t in times.items()}
    ratios, paired_ratios, ratio_targets = {}, {}, {}
    for ratio, (top, bottom, kind, bound) in RATIOS.items():
        if top in times and bottom in times:
            value = stats[top]["median_s"] / stats[bottom]["median_s"]
            ratios[ratio] = value
            # Median over rounds of the ratio within a round (the calls of one round run back
            # to back): less sensitive to slow drifts of the machine's load; for information.
            paired_ratios[ratio] = statistics.median(
                a / b for a, b in zip(times[top], times[bottom]))
            ratio_targets[ratio] = {kind: bound,
                                    "met": value <= bound if kind == "max" else value >= bound}
    model = nnx.merge(setup.graphdef, setup.state)[0]
    record = {
        "config": name,
        "method": method_name,
        **models.of(method_name),
        "optimizer": setup.optimizer,
        "params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "num_classes": NUM_CLASSES,
        "num_experts": num_experts,
        "missing_share": missing_share,
        # XLA's buffers for one l2d_step (arguments: state and batch; temporaries: activations
        # and gradients), as its compiler plans them for this device.
        "l2d_step_memory": step_memory(steps["l2d_step"], *carried["l2d_step"], batch,
                                       global_step),
        "batch_size": batch_size,
        "image_shape": [image_size, image_size, CHANNELS],
        "warmup": warmup,
        "repeats": repeats,
    }
    if "unfused" in steps:
        record["unfused_forward_mode"] = forward_mode
    return {**record, "variants": stats, "ratios": ratios, "paired_ratios": paired_ratios,
            "targets": ratio_targets}


def step_memory(step: Callable, *args) -> dict[str, int]:
    """Bytes of a jitted step's arguments, outputs and temporaries, from its compiled program."""
    analysis = step.lower(*args).compile().memory_analysis()
    return {"argument_bytes": int(analysis.argument_size_in_bytes),
            "output_bytes": int(analysis.output_size_in_bytes),
            "temp_bytes": int(analysis.temp_size_in_bytes)}


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
    }


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of one report, a row per (config, method): ms per step as median
    (min-max), and the ratios; "-" where a variant or ratio does not apply."""
    env = report["environment"]
    lines = [
        f"{env['device_kind']} ({env['platform']}), jax {env['jax_version']}",
        "",
        "| config | method | K | batch | "
        + " | ".join(f"{variant} ms" for variant in VARIANTS) + " | " + " | ".join(RATIOS)
        + " | params | l2d_step memory MiB (arguments + temporaries) |",
        "| --- " * (6 + len(VARIANTS) + len(RATIOS)) + "|",
    ]
    for record in report["results"]:
        models = " + ".join(f"{record[model]} {record[width]}"
                            for model, width in networks(record["method"]))
        cells = [f"{record['config']} ({models})", record["method"],
                 str(record["num_experts"]), str(record["batch_size"])]
        for variant in VARIANTS:
            s = record["variants"].get(variant)
            cells.append("-" if s is None else f"{1e3 * s['median_s']:.1f} "
                         f"({1e3 * s['min_s']:.1f}-{1e3 * s['max_s']:.1f})")
        for ratio in RATIOS:
            target = record["targets"].get(ratio)
            if target is None:
                cells.append("-")
                continue
            sign, bound = ("<=", target["max"]) if "max" in target else (">=", target["min"])
            cells.append(f"{record['ratios'][ratio]:.3f} "
                         f"({'met' if target['met'] else 'missed'}: {sign} {bound})")
        memory = record["l2d_step_memory"]
        cells += [f"{record['params']:,}", f"{memory['argument_bytes'] / 2**20:.2f} + "
                  f"{memory['temp_bytes'] / 2**20:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m l2d.bench",
        description="Time each method's training step against its fixed-target limit (and EM's "
                    "against the original's unfused sequence), in one process, on one random "
                    "batch.")
    parser.add_argument("--config", choices=(*PRESETS, "all"), default="all",
                        help="default: EM cnn 32 + preact_resnet10 64, surrogates "
                             "preact_resnet10 64 (TrainConfig's models, SGD); small: EM cnn 16 "
                             "+ preact_resnet10 8, surrogates preact_resnet10 8 (SGD); netsimple: "
                             "the CIFAR-K benchmark's NetSimple for every network, Adam "
                             "(default: all)")
    parser.add_argument("--method", choices=(*LIMITS, "all"), default="all",
                        help="the method(s) to time (default: all)")
    parser.add_argument("--experts", type=lambda text: [int(k) for k in text.split(",")],
                        default=[NUM_EXPERTS], metavar="K[,K...]",
                        help=f"numbers of experts to time each method with, e.g. 2,10,50,100 "
                             f"(default: {NUM_EXPERTS})")
    parser.add_argument("--missing-share", type=float, default=0.0, metavar="R",
                        help="share of the expert labels missing in the batch, e.g. 0.98 for a "
                             "crowd (default: 0)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32, help="square RGB images")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unfused-forward-mode", choices=("eval", "train"), default="eval",
                        help="BatchNorm mode of EM's unfused variant's extra forwards (the "
                             "original used eval)")
    parser.add_argument("--output", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "image_size", "repeats", "warmup"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be at least 1")
    if min(args.experts) < 1:
        parser.error(f"--experts: every K must be at least 1, got {args.experts}")
    if not 0 <= args.missing_share < 1:
        parser.error(f"--missing-share={args.missing_share}: must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(PRESETS) if args.config == "all" else [args.config]
    methods = list(LIMITS) if args.method == "all" else [args.method]
    report = {"command": "python -m l2d.bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "environment": environment(), "variants": VARIANTS, "results": []}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for name in names:
        for method in methods:
            for num_experts in args.experts:
                report["results"].append(benchmark(
                    name, method, PRESETS[name], batch_size=args.batch_size,
                    image_size=args.image_size, repeats=args.repeats, warmup=args.warmup,
                    seed=args.seed, forward_mode=args.unfused_forward_mode,
                    training=PRESET_TRAINING.get(name), num_experts=num_experts,
                    missing_share=args.missing_share, log=log))
    print(format_table(report))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
