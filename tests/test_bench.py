"""The benchmark (``python -m l2d.bench``): its report, and that its variants do the same work."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d import bench
from l2d.methods import em
from l2d.preprocess import normalise
from l2d.train_step import zero_train_totals

TINY = bench.Models("cnn", 4, "preact_resnet10", 2, "cnn", 4, "cnn", 3, "cnn", 3)
BATCH, IMAGE_SIZE = 4, 8
METHOD_NAMES = ["em", "softmax", "ova", "rs", "asm", "confidence", "two_stage", "selective"]
EXPECTED_VARIANTS = {name: {"l2d_step", "limit"} for name in METHOD_NAMES}
EXPECTED_VARIANTS["em"] = {"l2d_step", "limit", "unfused"}


def test_main_writes_a_report_of_positive_times_and_their_median_ratios(monkeypatch, tmp_path,
                                                                         capsys):
    monkeypatch.setitem(bench.PRESETS, "small", TINY)
    output = tmp_path / "out" / "bench.json"
    assert bench.main(["--config", "small", "--method", "all", "--batch-size", str(BATCH),
                       "--image-size", str(IMAGE_SIZE), "--repeats", "2", "--warmup", "1",
                       "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert set(report) == {"command", "environment", "variants", "results"}
    assert {"jax_version", "platform", "device_kind"} <= set(report["environment"])
    assert [(r["config"], r["method"]) for r in report["results"]] == [
        ("small", name) for name in METHOD_NAMES]
    table = capsys.readouterr().out
    for record in report["results"]:
        method = record["method"]
        if method == "em":
            assert (record["clf_width"], record["dfr_width"]) == (4, 2)
            assert "model" not in record
        elif method in ("softmax", "ova", "rs", "asm"):
            assert (record["model"], record["width"]) == ("cnn", 4)
            assert "clf_model" not in record
        else:
            assert record["clf_width"] == 4 and "model" not in record
        assert record["params"] > 0
        assert record["batch_size"] == BATCH
        assert record["image_shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
        assert set(record["variants"]) == EXPECTED_VARIANTS[method]
        for stats in record["variants"].values():
            assert len(stats["times_s"]) == 2
            assert all(t > 0 for t in stats["times_s"])
            assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
            assert stats["median_s"] == pytest.approx(float(np.median(stats["times_s"])))
        median = {v: s["median_s"] for v, s in record["variants"].items()}
        ratios, targets = record["ratios"], record["targets"]
        assert ratios["l2d_step/limit"] == pytest.approx(median["l2d_step"] / median["limit"])
        assert targets["l2d_step/limit"]["met"] == (ratios["l2d_step/limit"] <= 1.05)
        if method == "em":
            assert ratios["unfused/l2d_step"] == pytest.approx(
                median["unfused"] / median["l2d_step"])
            assert targets["unfused/l2d_step"]["met"] == (ratios["unfused/l2d_step"] >= 1.15)
        assert set(ratios) == set(targets) == set(record["paired_ratios"]) == (
            {"l2d_step/limit", "unfused/l2d_step"} if method == "em" else {"l2d_step/limit"})
        assert all(r > 0 for r in record["paired_ratios"].values())
    assert "| small (cnn 4 + preact_resnet10 2) | em | 2 | 4 |" in table
    for method in ("softmax", "ova", "rs", "asm", "confidence", "two_stage", "selective"):
        row = next(line for line in table.splitlines() if f"| {method} |" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:4] == [method, "2", "4"]
        # No unfused time and no unfused/l2d_step ratio.
        assert [cells[6], cells[8]] == ["-", "-"] and "-" not in (cells[4], cells[5], cells[7])


def test_more_experts_grow_only_the_outputs_and_missing_labels_train(monkeypatch, tmp_path,
                                                                     capsys):
    monkeypatch.setitem(bench.PRESETS, "small", TINY)
    output = tmp_path / "bench.json"
    assert bench.main(["--config", "small", "--method", "softmax", "--experts", "2,40",
                       "--missing-share", "0.9", "--batch-size", str(BATCH), "--image-size",
                       str(IMAGE_SIZE), "--repeats", "1", "--warmup", "1",
                       "--output", str(output)]) == 0
    few, many = json.loads(output.read_text())["results"]
    assert (few["num_experts"], many["num_experts"], many["missing_share"]) == (2, 40, 0.9)
    # The cnn's last layer (its input is its 4 channels) gains 38 outputs.
    assert many["params"] - few["params"] == 38 * (4 + 1)
    for record in (few, many):
        assert record["l2d_step_memory"]["argument_bytes"] > 0
        assert record["l2d_step_memory"]["temp_bytes"] > 0
    assert many["l2d_step_memory"]["argument_bytes"] > few["l2d_step_memory"]["argument_bytes"]


def fresh(setup):
    return jax.device_put(jax.tree.map(jnp.copy, setup.state), setup.placement)


def params(setup, state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(
        nnx.merge(setup.graphdef, state)[0], nnx.Param))]


def assert_every_param_changed(setup, new_state, variant):
    before = params(setup, setup.state)
    unchanged = sum(np.array_equal(a, b) for a, b in zip(before, params(setup, new_state)))
    assert unchanged == 0, f"{variant}: {unchanged} of {len(before)} params unchanged"


def test_em_variants_do_the_same_work_as_l2d_step():
    """Given the posterior l2d's step computes, the limit and the unfused sequence (extra
    forwards in train mode) reach its new state; all of them change every parameter."""
    setup = bench.build("em", TINY, batch_size=BATCH, seed=0, forward_mode="train")
    batch, _ = jax.device_put(bench.random_inputs(0, batch_size=BATCH, image_size=IMAGE_SIZE,
                                                  num_targets=bench.NUM_EXPERTS + 1),
                              setup.placement)

    # The posterior l2d's step computes inside: both networks forward once, in train mode.
    system = nnx.merge(setup.graphdef, fresh(setup))[0]
    inputs = normalise(batch["image"], jnp.asarray(bench.CHANNEL_MEAN),
                       jnp.asarray(bench.CHANNEL_STD))
    q = em.e_step(system.gate(inputs), system.classifier(inputs), batch["expert_labels"],
                  batch["label"], num_classes=bench.NUM_CLASSES, smoothing=0.0, method="exact",
                  mc_samples=1, key=None)

    totals = jax.device_put(zero_train_totals(setup.method), setup.placement)
    global_step = jax.device_put(jnp.asarray(0, jnp.int32), setup.placement)
    new_states = {
        "l2d_step": setup.steps["l2d_step"](fresh(setup), totals, batch, global_step)[0],
        "limit": setup.steps["limit"](fresh(setup), batch, q),
        "unfused": setup.steps["unfused"](fresh(setup), batch)[0],
    }
    for variant, new_state in new_states.items():
        assert_every_param_changed(setup, new_state, variant)
    reference = jax.tree.leaves(new_states["l2d_step"])
    for variant in ("limit", "unfused"):
        for ours, theirs in zip(reference, jax.tree.leaves(new_states[variant]), strict=True):
            np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=1e-4,
                                       atol=1e-6, err_msg=variant)


def test_surrogate_variants_compile_once_and_update_every_parameter():
    """The limit's loss (per-output logistic loss against fixed targets) is not the surrogate's,
    so their new states differ; both must still train the whole network, stay finite and compile
    once."""
    setup = bench.build("ova", TINY, batch_size=BATCH, seed=0)
    assert set(setup.steps) == {"l2d_step", "limit"}
    batch, targets = jax.device_put(
        bench.random_inputs(0, batch_size=BATCH, image_size=IMAGE_SIZE,
                            num_targets=bench.NUM_CLASSES + bench.NUM_EXPERTS), setup.placement)
    global_step = jax.device_put(jnp.asarray(0, jnp.int32), setup.placement)
    state = fresh(setup)
    totals = jax.device_put(zero_train_totals(setup.method), setup.placement)
    limit_state = fresh(setup)
    for _ in range(2):
        state, totals = setup.steps["l2d_step"](state, totals, batch, global_step)
        limit_state = setup.steps["limit"](limit_state, batch, targets)
    for variant, new_state in (("l2d_step", state), ("limit", limit_state)):
        assert setup.steps[variant]._cache_size() == 1, variant
        assert_every_param_changed(setup, new_state, variant)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new_state)), variant


def test_the_netsimple_preset_times_the_cifar_k_network_with_adam():
    record = bench.benchmark("netsimple", "softmax", bench.PRESETS["netsimple"], batch_size=4,
                             image_size=16, repeats=1, warmup=1,
                             training=bench.PRESET_TRAINING["netsimple"])
    assert (record["model"], record["width"], record["optimizer"]) == ("netsimple", 50, "adam")
    # 16x16 images reach the dense layers as 1x1 maps: 3800 + 62550 + (50 * 100 + 100)
    # + (100 * 20 + 20) + (20 * 12 + 12) for the C + K = 12 outputs.
    assert record["params"] == 3800 + 62550 + 5100 + 2020 + 252
    assert set(record["variants"]) == {"l2d_step", "limit"}
