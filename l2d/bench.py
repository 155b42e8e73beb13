"""``python -m l2d.bench``: how close l2d's fused EM step comes to the limit, and what it saves.

Three ways to train on one batch, timed in one process on the same random batch and models:

- ``l2d_step``: l2d's own step (``l2d.train_step.make_train_step``; augmentation off, exact
  E-step): one forward per network in training mode, E-step on those logits, one backward, both
  optimizer updates, on-device metric totals.
- ``limit``: one jitted forward + backward + update of both networks against FIXED soft targets q
  (passed in, not computed): the work every EM step has to do, minus the E-step and metrics.
- ``unfused``: the per-batch sequence of the original implementation (cnguyen10/learning_to_defer),
  rebuilt from its description as separately jitted calls: a gate forward for training coverage,
  a gate forward and a classifier forward for the E-step, the E-step posterior, then the update
  (the ``limit`` function, fed the computed q).

Variants run round-robin (l2d_step, limit, unfused, l2d_step, ...) after warm-up calls that
compile them, so machine noise spreads over all three; each timed call ends with
``jax.block_until_ready`` on its outputs and nothing else syncs with the host. Reported: median,
min and max seconds per step, and the ratios of medians l2d_step/limit (target <= 1.05) and
unfused/l2d_step (target >= 1.15); also, for information, the median of the per-round ratios.
Needs only jax, flax and optax (no MLX-Data, no MLflow).
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

from l2d import em
from l2d.config import TrainConfig
from l2d.parallel import AXIS, DataParallel
from l2d.preprocess import normalise
from l2d.system import build_system
from l2d.train_step import make_train_step, zero_train_totals

VARIANTS = {
    "l2d_step": "l2d's fused EM step (make_train_step)",
    "limit": "forward + backward + updates of both networks with fixed soft targets",
    "unfused": "the original's sequence: gate fwd (coverage), gate fwd + clf fwd, E-step, update",
}
# Median-ratio targets from the issue: fusing must cost at most 5% over the limit and save at
# least 15% over the original's sequence.
TARGET_STEP_OVER_LIMIT = 1.05
TARGET_UNFUSED_OVER_STEP = 1.15

NUM_CLASSES = 10
NUM_EXPERTS = 2
CHANNELS = 3
# Fixed normalisation statistics (l2d computes them from the training set; speed is the same).
CHANNEL_MEAN = (0.5, 0.5, 0.5)
CHANNEL_STD = (0.25, 0.25, 0.25)


@dataclasses.dataclass(frozen=True)
class Models:
    """The two networks of a benchmark configuration."""

    clf_model: str
    clf_width: int
    dfr_model: str
    dfr_width: int


PRESETS = {
    # TrainConfig's defaults: the models a CIFAR-10 run trains.
    "default": Models("cnn", 32, "preact_resnet10", 64),
    # A CPU-sized system; the classifier (full resolution, no downsampling) dominates it.
    "small": Models("cnn", 16, "preact_resnet10", 8),
}


def make_limit_step(graphdef, *, channel_mean, channel_std, placement=None) -> Callable:
    """``step(state, batch, q) -> state``, jitted, donating ``state``: the unavoidable work.

    Same merge/split pattern, normalisation, losses, single backward pass and optimizers as
    ``l2d.train_step``, with ``q`` ``[batch, K + 1]`` given: the classifier's cross-entropy is
    weighted by ``q[:, -1]`` and the gate's is taken against ``q`` as soft labels. The new state
    is placed with ``placement`` (a sharding, or None to let XLA choose).
    """

    def step(state, batch, q):
        system, clf_optimizer, gate_optimizer = nnx.merge(graphdef, state)
        inputs = normalise(batch["image"], channel_mean, channel_std)

        def total_loss(system):
            clf_loss = em.classifier_loss(system.classifier(inputs), batch["label"], q,
                                          weighting="posterior")
            return clf_loss + em.gating_loss(system.gate(inputs), q)

        grads = nnx.grad(total_loss, argnums=nnx.DiffState(0, nnx.Param))(system)
        clf_optimizer.update(system.classifier, grads.classifier)
        gate_optimizer.update(system.gate, grads.gate)
        return nnx.state((system, clf_optimizer, gate_optimizer))

    return jax.jit(step, donate_argnums=0, out_shardings=placement)


def make_unfused_step(
    graphdef, *, update: Callable, num_classes: int, channel_mean, channel_std,
    forward_mode: str = "eval",
) -> Callable:
    """``step(state, batch) -> (state, coverage)``: the original's five separate jitted calls.

    ``update`` is ``make_limit_step``'s function. The original ran its extra forwards through
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
            system = nnx.merge(graphdef, state)[0]
            if forward_mode == "eval":
                system.eval()
            return getattr(system, part)(normalise(images, channel_mean, channel_std))
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


def random_inputs(seed: int, *, batch_size: int, image_size: int) -> tuple[dict, Any]:
    """A uint8 image batch with labels and expert labels, and fixed soft targets q ``[B, K+1]``."""
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, CHANNELS),
                              dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        "expert_labels": rng.integers(0, NUM_CLASSES, (batch_size, NUM_EXPERTS)).astype(np.int32),
    }
    logits = rng.normal(size=(batch_size, NUM_EXPERTS + 1))
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return batch, q.astype(np.float32)


def build(models: Models, *, batch_size: int, seed: int, forward_mode: str = "eval"):
    """``(graphdef, state, {variant: step}, placement)`` for one set of models.

    ``l2d_step`` is what ``l2d train`` runs for this configuration; ``unfused`` updates through
    the same jitted function as ``limit``. ``placement`` is the one-device sharding that every
    input and every new state has, so no call sees a new placement and compiles again.
    """
    config = TrainConfig(clf_model=models.clf_model, clf_width=models.clf_width,
                         dfr_model=models.dfr_model, dfr_width=models.dfr_width,
                         batch_size=batch_size, seed=seed, augment=False, e_step="exact")
    graphdef, state = build_system(config, in_channels=CHANNELS, num_classes=NUM_CLASSES,
                                   num_experts=NUM_EXPERTS, total_steps=10_000)
    mean, std = jnp.asarray(CHANNEL_MEAN), jnp.asarray(CHANNEL_STD)
    # l2d's data-parallel training keeps the state replicated over a 1-D mesh of its devices;
    # the benchmark's mesh is one device.
    placement = DataParallel(Mesh(np.asarray(jax.devices()[:1]), (AXIS,))).replicated
    l2d_step = make_train_step(graphdef, config=config, num_classes=NUM_CLASSES,
                               channel_mean=mean, channel_std=std, replicated=placement)
    limit = make_limit_step(graphdef, channel_mean=mean, channel_std=std, placement=placement)
    unfused = make_unfused_step(graphdef, update=limit, num_classes=NUM_CLASSES,
                                channel_mean=mean, channel_std=std, forward_mode=forward_mode)
    steps = {"l2d_step": l2d_step, "limit": limit, "unfused": unfused}
    return graphdef, state, steps, placement


def compilations(steps: dict[str, Callable]) -> int:
    """How many programs the variants' jitted functions have compiled so far."""
    jitted = [steps["l2d_step"], steps["limit"], *steps["unfused"].jitted]
    return sum(function._cache_size() for function in jitted)


def benchmark(
    name: str, models: Models, *, batch_size: int = 128, image_size: int = 32,
    repeats: int = 10, warmup: int = 2, seed: int = 0, forward_mode: str = "eval",
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Time the three variants on one configuration; return its JSON-ready record."""
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    graphdef, state, steps, placement = build(models, batch_size=batch_size, seed=seed,
                                              forward_mode=forward_mode)
    batch, q = jax.device_put(random_inputs(seed, batch_size=batch_size, image_size=image_size),
                              placement)
    # Unused with augmentation off and the exact E-step, but passed as l2d train passes it.
    global_step = jax.device_put(jnp.asarray(0, jnp.int32), placement)

    def fresh_state():  # Each variant trains its own copy (the steps donate their input).
        return jax.device_put(jax.tree.map(jnp.copy, state), placement)

    carried = {"l2d_step": (fresh_state(), jax.device_put(zero_train_totals(), placement)),
               "limit": fresh_state(), "unfused": fresh_state()}

    # Each run returns (everything to block on, what its next call takes).
    def run_l2d_step(carry):
        outputs = steps["l2d_step"](*carry, batch, global_step)  # (state, totals)
        return outputs, outputs

    def run_limit(carry):
        new_state = steps["limit"](carry, batch, q)
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

    log(f"{name}: compiling and warming up ({warmup} call(s) per variant)")
    for _ in range(warmup):
        for variant in VARIANTS:
            call(variant)
    compiled = compilations(steps)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for index in range(repeats):
        for variant in VARIANTS:
            times[variant].append(call(variant))
        log(f"{name}: repeat {index + 1}/{repeats}: "
            + ", ".join(f"{v} {times[v][-1]:.4f} s" for v in VARIANTS))
    if compilations(steps) != compiled:
        raise RuntimeError(f"{name}: a variant compiled again while being timed "
                           f"({compiled} -> {compilations(steps)} programs)")

    stats = {v: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                 "times_s": t} for v, t in times.items()}
    step_over_limit = stats["l2d_step"]["median_s"] / stats["limit"]["median_s"]
    unfused_over_step = stats["unfused"]["median_s"] / stats["l2d_step"]["median_s"]
    system = nnx.merge(graphdef, state)[0]
    return {
        "config": name,
        **dataclasses.asdict(models),
        "params": {part: sum(x.size for x in jax.tree.leaves(
            nnx.state(getattr(system, part), nnx.Param))) for part in ("classifier", "gate")},
        "num_classes": NUM_CLASSES,
        "num_experts": NUM_EXPERTS,
        "batch_size": batch_size,
        "image_shape": [image_size, image_size, CHANNELS],
        "warmup": warmup,
        "repeats": repeats,
        "unfused_forward_mode": forward_mode,
        "variants": stats,
        "ratios": {"l2d_step/limit": step_over_limit, "unfused/l2d_step": unfused_over_step},
        # Median over rounds of the ratio within a round (the calls of one round run back to
        # back): less sensitive to slow drifts of the machine's load; for information.
        "paired_ratios": {
            "l2d_step/limit": statistics.median(
                a / b for a, b in zip(times["l2d_step"], times["limit"])),
            "unfused/l2d_step": statistics.median(
                c / a for c, a in zip(times["unfused"], times["l2d_step"])),
        },
        "targets": {
            "l2d_step/limit": {"max": TARGET_STEP_OVER_LIMIT,
                               "met": step_over_limit <= TARGET_STEP_OVER_LIMIT},
            "unfused/l2d_step": {"min": TARGET_UNFUSED_OVER_STEP,
                                 "met": unfused_over_step >= TARGET_UNFUSED_OVER_STEP},
        },
    }


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
    """A Markdown table of one report: ms per step as median (min-max), and the two ratios."""
    env = report["environment"]
    lines = [
        f"{env['device_kind']} ({env['platform']}), jax {env['jax_version']}",
        "",
        ("| config | batch | l2d_step ms | limit ms | unfused ms | l2d_step/limit | "
         "unfused/l2d_step |"),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in report["results"]:
        models = (f"{record['clf_model']} {record['clf_width']} + "
                  f"{record['dfr_model']} {record['dfr_width']}")
        cells = [f"{record['config']} ({models})", str(record["batch_size"])]
        for variant in VARIANTS:
            s = record["variants"][variant]
            cells.append(f"{1e3 * s['median_s']:.1f} ({1e3 * s['min_s']:.1f}-"
                         f"{1e3 * s['max_s']:.1f})")
        for ratio, target in record["targets"].items():
            sign = "<=" if "max" in target else ">="
            bound = target.get("max", target.get("min"))
            cells.append(f"{record['ratios'][ratio]:.3f} "
                         f"({'met' if target['met'] else 'missed'}: {sign} {bound})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m l2d.bench",
        description="Time l2d's EM step against the fixed-target limit and the original's "
                    "unfused sequence, in one process, on one random batch.")
    parser.add_argument("--config", choices=(*PRESETS, "both"), default="both",
                        help="default: cnn 32 + preact_resnet10 64 (TrainConfig's models); "
                             "small: cnn 16 + preact_resnet10 8 (default: both)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32, help="square RGB images")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unfused-forward-mode", choices=("eval", "train"), default="eval",
                        help="BatchNorm mode of the unfused variant's extra forwards (the "
                             "original used eval)")
    parser.add_argument("--output", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "image_size", "repeats", "warmup"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(PRESETS) if args.config == "both" else [args.config]
    report = {"command": "python -m l2d.bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "environment": environment(), "variants": VARIANTS, "results": []}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for name in names:
        report["results"].append(benchmark(
            name, PRESETS[name], batch_size=args.batch_size, image_size=args.image_size,
            repeats=args.repeats, warmup=args.warmup, seed=args.seed,
            forward_mode=args.unfused_forward_mode, log=log))
    print(format_table(report))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
