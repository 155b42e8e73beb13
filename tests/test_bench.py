"""The benchmark (``python -m l2d.bench``): its report, and that its variants do the same work."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d import bench, em
from l2d.preprocess import normalise
from l2d.train_step import zero_train_totals

TINY = bench.Models("cnn", 4, "preact_resnet10", 2)
BATCH, IMAGE_SIZE = 4, 8


def test_main_writes_a_report_of_positive_times_and_their_median_ratios(monkeypatch, tmp_path,
                                                                         capsys):
    monkeypatch.setitem(bench.PRESETS, "small", TINY)
    output = tmp_path / "out" / "bench.json"
    assert bench.main(["--config", "small", "--batch-size", str(BATCH), "--image-size",
                       str(IMAGE_SIZE), "--repeats", "2", "--warmup", "1",
                       "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert set(report) == {"command", "environment", "variants", "results"}
    assert {"jax_version", "platform", "device_kind"} <= set(report["environment"])
    [record] = report["results"]
    assert record["config"] == "small"
    assert (record["clf_width"], record["dfr_width"]) == (4, 2)
    assert record["batch_size"] == BATCH and record["image_shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
    assert set(record["variants"]) == set(bench.VARIANTS)
    for stats in record["variants"].values():
        assert len(stats["times_s"]) == 2
        assert all(t > 0 for t in stats["times_s"])
        assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
        assert stats["median_s"] == pytest.approx(float(np.median(stats["times_s"])))
    median = {v: s["median_s"] for v, s in record["variants"].items()}
    ratios = record["ratios"]
    assert ratios["l2d_step/limit"] == pytest.approx(median["l2d_step"] / median["limit"])
    assert ratios["unfused/l2d_step"] == pytest.approx(median["unfused"] / median["l2d_step"])
    assert set(record["paired_ratios"]) == set(ratios)
    assert all(r > 0 for r in record["paired_ratios"].values())
    targets = record["targets"]
    assert targets["l2d_step/limit"]["met"] == (ratios["l2d_step/limit"] <= 1.05)
    assert targets["unfused/l2d_step"]["met"] == (ratios["unfused/l2d_step"] >= 1.15)
    assert "| small (cnn 4 + preact_resnet10 2) | 4 |" in capsys.readouterr().out


def test_variants_do_the_same_work_as_l2d_step():
    """Given the posterior l2d's step computes, the limit and the unfused sequence (extra
    forwards in train mode) reach its new state; all of them change every parameter."""
    graphdef, state, steps, placement = bench.build(TINY, batch_size=BATCH, seed=0,
                                                    forward_mode="train")
    batch, _ = jax.device_put(bench.random_inputs(0, batch_size=BATCH, image_size=IMAGE_SIZE),
                              placement)

    def fresh():
        return jax.device_put(jax.tree.map(jnp.copy, state), placement)

    # The posterior l2d's step computes inside: both networks forward once, in train mode.
    system = nnx.merge(graphdef, fresh())[0]
    inputs = normalise(batch["image"], jnp.asarray(bench.CHANNEL_MEAN),
                       jnp.asarray(bench.CHANNEL_STD))
    q = em.e_step(system.gate(inputs), system.classifier(inputs), batch["expert_labels"],
                  batch["label"], num_classes=bench.NUM_CLASSES, smoothing=0.0, method="exact",
                  mc_samples=1, key=None)

    totals = jax.device_put(zero_train_totals(), placement)
    global_step = jax.device_put(jnp.asarray(0, jnp.int32), placement)
    new_states = {
        "l2d_step": steps["l2d_step"](fresh(), totals, batch, global_step)[0],
        "limit": steps["limit"](fresh(), batch, q),
        "unfused": steps["unfused"](fresh(), batch)[0],
    }

    def params(tree) -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree.leaves(nnx.state(
            nnx.merge(graphdef, tree)[0], nnx.Param))]

    before = params(state)
    for variant, new_state in new_states.items():
        unchanged = sum(np.array_equal(a, b) for a, b in zip(before, params(new_state)))
        assert unchanged == 0, f"{variant}: {unchanged} of {len(before)} params unchanged"
    reference = jax.tree.leaves(new_states["l2d_step"])
    for variant in ("limit", "unfused"):
        for ours, theirs in zip(reference, jax.tree.leaves(new_states[variant]), strict=True):
            np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=1e-4,
                                       atol=1e-6, err_msg=variant)
