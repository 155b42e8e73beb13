"""The training step of every method: compiles once, updates every network, runs each network
once, and for EM reproduces what main's two optimizers gave before the method interface."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.config import TrainConfig
from l2d.methods import METHODS, em, make_method
from l2d.methods.base import Problem
from l2d.methods.options import TRAIN_COVERAGE
from l2d.parallel import data_parallel
from l2d.train_state import build_state
from l2d.train_step import make_train_step, zero_train_totals

NUM_CLASSES, NUM_EXPERTS, BATCH = 3, 2, 4
# Recorded by the code of commit da18109 (two optimizers, one per network) before the method
# interface replaced it: initial parameters and BatchNorm statistics, three batches, the losses
# and training coverage of each step, and the parameters and statistics after the third step.
EM_REFERENCE = Path(__file__).parent / "data" / "em_reference_da18109.npz"


def tiny_config(**changes) -> TrainConfig:
    method = changes.get("method", "em")
    widths = ({"clf_width": 4, "dfr_width": 2} if method == "em" else
              {width: 2 for _, width in METHODS[method].options.networks})
    return TrainConfig.from_dict({**widths, "batch_size": BATCH, "seed": 1, **changes})


def random_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
        "expert_labels": rng.integers(0, NUM_CLASSES, (BATCH, NUM_EXPERTS)).astype(np.int32),
    }


def make(config: TrainConfig):
    """(method, graphdef, state, step) placed as ``l2d.training`` places them (state replicated)."""
    parallel = data_parallel()
    method = make_method(config.method, config.method_options, Problem(
        image_shape=(8, 8, 3), num_classes=NUM_CLASSES, num_experts=NUM_EXPERTS))
    graphdef, state = build_state(method, config.training, total_steps=10)
    step = make_train_step(graphdef, method=method, seed=config.training.seed,
                           augment_images=config.data.augment, channel_mean=jnp.full(3, 0.5),
                           channel_std=jnp.full(3, 0.25), replicated=parallel.replicated)
    return method, graphdef, parallel.replicate(state), step


def zero_totals(method):
    return data_parallel().replicate(zero_train_totals(method))


def params_of(graphdef, state) -> list[np.ndarray]:
    model = nnx.merge(graphdef, state)[0]
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("changes", [
    {}, {"e_step": "mc", "augment": True, "clf_weighting": "uniform"},
    {"method": "softmax"}, {"method": "ova", "augment": True}, {"method": "rs"},
    {"method": "asm"}, {"method": "confidence"}, {"method": "two_stage"}, {"method": "selective"},
])
def test_step_compiles_once_and_updates_every_parameter(changes):
    method, graphdef, state, step = make(tiny_config(**changes))
    before = params_of(graphdef, state)
    totals = zero_totals(method)
    for index in range(3):
        state, totals = step(state, totals, random_batch(index), index)
    assert step._cache_size() == 1
    changed = [not np.array_equal(a, b) for a, b in zip(before, params_of(graphdef, state))]
    assert all(changed), f"{changed.count(False)} of {len(changed)} params unchanged"
    totals = jax.device_get(totals)
    assert set(totals) == {*method.measurements, "nonfinite_steps"}
    assert all(np.isfinite(v) for v in totals.values())
    assert totals["nonfinite_steps"] == 0
    assert 0 <= totals[TRAIN_COVERAGE] <= 3


@pytest.mark.parametrize("method_name, calls", [
    ("em", {"CNN": 1, "PreActResNet": 1}), ("softmax", {"PreActResNet": 1}),
])
def test_each_network_runs_forward_once_per_step(monkeypatch, method_name, calls):
    method, graphdef, state, step = make(tiny_config(method=method_name))
    counted = {}
    for module in nnx.iter_modules(nnx.merge(graphdef, state)[0]):
        cls = type(module[1])
        if cls.__name__ in calls and cls.__name__ not in counted:
            counted[cls.__name__] = 0

            def counting(self, x, _original=cls.__call__, _name=cls.__name__):
                counted[_name] += 1
                return _original(self, x)

            monkeypatch.setattr(cls, "__call__", counting)
    jax.eval_shape(step, state, zero_train_totals(method), random_batch(0), 0)  # Traces only.
    assert counted == calls


def test_em_reproduces_the_two_optimizer_step_of_main():
    reference = np.load(EM_REFERENCE)
    # The configuration the reference was recorded with (cnn classifier and gate, MC E-step
    # and augmentation, so that the per-step keys are pinned too).
    config = TrainConfig.from_dict(dict(clf_model="cnn", clf_width=4, dfr_model="cnn",
                                        dfr_width=3, batch_size=BATCH, seed=1, lr=0.05,
                                        augment=True, e_step="mc", mc_samples=4))
    method, graphdef, state, step = make(config)
    model, optimizer = nnx.merge(graphdef, state)
    flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    initial = {"/".join(map(str, path)): value for path, value in flat}
    assert set(initial) == {k.removeprefix("init/") for k in reference if k.startswith("init/")}
    for name, variable in initial.items():
        variable[...] = jnp.asarray(reference[f"init/{name}"])
    nnx.update(model, nnx.from_flat_state(flat))
    state = data_parallel().replicate(nnx.state((model, optimizer)))
    losses = []
    for index in range(3):
        batch = {key: reference[f"batch{index}/{key}"]
                 for key in ("image", "label", "expert_labels")}
        state, totals = step(state, zero_totals(method), batch, index)
        totals = jax.device_get(totals)
        losses.append([totals[em.CLF_LOSS], totals[em.GATE_LOSS], totals[TRAIN_COVERAGE]])
    np.testing.assert_allclose(losses, reference["losses"], rtol=1e-6)
    final = nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state)[0],
                                        (nnx.Param, nnx.BatchStat)))
    for path, variable in final:
        name = "/".join(map(str, path))
        np.testing.assert_allclose(np.asarray(variable[...]), reference[f"final/{name}"],
                                   rtol=1e-5, atol=1e-7, err_msg=name)


def test_same_seed_same_result_different_seed_different_result():
    def final_loss(seed):
        method, graphdef, state, step = make(tiny_config(seed=seed, augment=True))
        totals = zero_totals(method)
        for index in range(2):
            state, totals = step(state, totals, random_batch(index), index)
        return float(totals[em.GATE_LOSS])

    first = final_loss(5)
    assert final_loss(5) == first
    assert final_loss(6) != first


def test_every_registered_method_has_its_flags_declared():
    from l2d.options import MethodOptions

    assert all(issubclass(entry.options, MethodOptions) and entry.options.declared()
               for entry in METHODS.values())
    assert all(METHODS[name].implementation().name == name for name in METHODS)


def test_optimizer_decays_kernels_only_and_decays_the_learning_rate_to_zero():
    from l2d.train_state import make_optimizer

    config = tiny_config(lr=0.1, momentum=0.0, weight_decay=0.5)
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)},
              "norm": {"scale": jnp.ones(2)}}
    tx = make_optimizer(config.training, total_steps=4)
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


@pytest.mark.parametrize("method_name", ["em", "ova"])
def test_bfloat16_compute_keeps_float32_parameters_and_close_losses(method_name):
    def run(dtype):
        method, graphdef, state, step = make(tiny_config(compute_dtype=dtype,
                                                         method=method_name))
        totals = zero_totals(method)
        for index in range(2):
            state, totals = step(state, totals, random_batch(index), index)
        return method, jax.device_get(totals), {p.dtype for p in params_of(graphdef, state)}

    method, full, full_dtypes = run("float32")
    _, half, half_dtypes = run("bfloat16")
    assert full_dtypes == half_dtypes == {np.dtype(np.float32)}
    for name in method.measurements:
        # The losses; training coverage counts argmaxes, which bfloat16 may flip.
        if name != TRAIN_COVERAGE:
            # bfloat16 keeps 8 bits of mantissa: about 2 significant digits.
            np.testing.assert_allclose(half[name], full[name], rtol=0.05, err_msg=name)
    assert half["nonfinite_steps"] == 0
