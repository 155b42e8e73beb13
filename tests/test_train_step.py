"""The fused EM training step: compiles once, updates both networks, runs each network once."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.config import TrainConfig
from l2d.parallel import data_parallel
from l2d.system import build_system
from l2d.train_step import make_train_step, zero_train_totals

NUM_CLASSES, NUM_EXPERTS, BATCH = 3, 2, 4


def tiny_config(**changes) -> TrainConfig:
    return dataclasses.replace(
        TrainConfig(clf_width=4, dfr_width=2, batch_size=BATCH, seed=1), **changes)


def random_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
        "expert_labels": rng.integers(0, NUM_CLASSES, (BATCH, NUM_EXPERTS)).astype(np.int32),
    }


def make(config: TrainConfig):
    """(graphdef, state, step) placed as ``l2d.train`` places them (state replicated)."""
    parallel = data_parallel()
    graphdef, state = build_system(config, in_channels=3, num_classes=NUM_CLASSES,
                                   num_experts=NUM_EXPERTS, total_steps=10)
    step = make_train_step(graphdef, config=config, num_classes=NUM_CLASSES,
                           channel_mean=jnp.full(3, 0.5), channel_std=jnp.full(3, 0.25),
                           replicated=parallel.replicated)
    return graphdef, parallel.replicate(state), step


def zero_totals():
    return data_parallel().replicate(zero_train_totals())


def params_of(graphdef, state, part: str) -> list[np.ndarray]:
    system = nnx.merge(graphdef, state)[0]
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(getattr(system, part), nnx.Param))]


@pytest.mark.parametrize("changes", [{}, {"e_step": "mc", "augment": True}])
def test_step_compiles_once_and_updates_both_networks(changes):
    graphdef, state, step = make(tiny_config(clf_weighting="uniform", **changes))
    before = {part: params_of(graphdef, state, part) for part in ("classifier", "gate")}
    totals = zero_totals()
    for index in range(3):
        state, totals = step(state, totals, random_batch(index), index)
    assert step._cache_size() == 1
    for part, old in before.items():
        new = params_of(graphdef, state, part)
        changed = [not np.array_equal(a, b) for a, b in zip(old, new)]
        assert all(changed), f"{part}: {changed.count(False)} of {len(changed)} params unchanged"
    totals = jax.device_get(totals)
    assert all(np.isfinite(v) for v in totals.values())
    assert 0 <= totals["coverage/train"] <= 3


def test_each_network_runs_forward_once_per_step(monkeypatch):
    config = tiny_config()
    graphdef, state, step = make(config)
    system = nnx.merge(graphdef, state)[0]
    calls = {}
    for part in ("classifier", "gate"):
        cls = type(getattr(system, part))
        calls[cls.__name__] = 0

        def counting(self, x, _original=cls.__call__, _name=cls.__name__):
            calls[_name] += 1
            return _original(self, x)

        monkeypatch.setattr(cls, "__call__", counting)
    jax.eval_shape(step, state, zero_train_totals(), random_batch(0), 0)  # Traces, runs nothing.
    assert calls == {"CNN": 1, "PreActResNet": 1}


def test_same_seed_same_result_different_seed_different_result():
    def final_loss(seed):
        graphdef, state, step = make(tiny_config(seed=seed, augment=True))
        totals = zero_totals()
        for index in range(2):
            state, totals = step(state, totals, random_batch(index), index)
        return float(totals["loss/dfr"])

    assert final_loss(5) == final_loss(5)
    assert final_loss(5) != final_loss(6)


def test_optimizer_decays_kernels_only_and_decays_the_learning_rate_to_zero():
    from l2d.system import make_optimizer

    config = tiny_config(lr=0.1, momentum=0.0, weight_decay=0.5)
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)},
              "norm": {"scale": jnp.ones(2)}}
    tx = make_optimizer(config, total_steps=4)
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zero, state, params)
    # With zero gradients only weight decay moves anything: -lr * wd * kernel, nothing else.
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["conv"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)
    for _ in range(3):
        updates, state = tx.update(zero, state, params)
    # Cosine decay: after total_steps the learning rate, and so the update, is zero.
    updates, state = tx.update(zero, state, params)
    np.testing.assert_allclose(updates["conv"]["kernel"], 0.0, atol=1e-9)


def test_bfloat16_compute_keeps_float32_parameters_and_close_losses():
    def run(dtype):
        graphdef, state, step = make(tiny_config(compute_dtype=dtype))
        totals = zero_totals()
        for index in range(2):
            state, totals = step(state, totals, random_batch(index), index)
        params = params_of(graphdef, state, "gate") + params_of(graphdef, state, "classifier")
        return jax.device_get(totals), {p.dtype for p in params}

    full, full_dtypes = run("float32")
    half, half_dtypes = run("bfloat16")
    assert full_dtypes == half_dtypes == {np.dtype(np.float32)}
    for name in ("loss/clf", "loss/dfr"):
        # bfloat16 keeps 8 bits of mantissa: about 2 significant digits.
        np.testing.assert_allclose(half[name], full[name], rtol=0.05, err_msg=name)
    assert half["nonfinite_steps"] == 0
