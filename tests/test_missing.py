"""Missing expert annotations: manifests, synthetic missing rates, and EM's E-step and losses."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dump, load, raises_one_line

from l2d.config import EvaluationOptions
from l2d.data.experts import ExpertSpec, write_experts
from l2d.data.manifest import MISSING, load_split
from l2d.evaluation.evaluate import check_test_workload
from l2d.methods import em

# Two inputs, three classes, two experts. Input 0: expert 0 missing, expert 1 right.
# Input 1: no annotation at all.
LABELS = jnp.array([2, 0])
EXPERT_LABELS = jnp.array([[MISSING, 2], [MISSING, MISSING]])
GATE_LOGITS = jnp.array([[0.5, -1.0, 0.2], [1.0, 2.0, -0.5]])
CLF_LOGITS = jnp.array([[0.1, 0.3, 1.2], [-0.3, 0.8, 0.0]])
# The annotation network's logits [batch, K, C].
ANNOTATION_LOGITS = jnp.array([[[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]],
                               [[1.5, 0.0, -1.0], [0.2, 0.1, 0.0]]])


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hand_posterior(mode: str) -> np.ndarray:
    prior = softmax(np.asarray(GATE_LOGITS, np.float64))
    clf = softmax(np.asarray(CLF_LOGITS, np.float64))
    annotation = softmax(np.asarray(ANNOTATION_LOGITS, np.float64))
    labels, experts = np.asarray(LABELS), np.asarray(EXPERT_LABELS)
    lik = np.empty((2, 3))
    for i in range(2):
        for k in range(2):
            if experts[i, k] != MISSING:
                lik[i, k] = float(experts[i, k] == labels[i])
            else:  # exclude: not an option; model: p(t_k = y | x).
                lik[i, k] = 0.0 if mode == "exclude" else annotation[i, k, labels[i]]
        lik[i, 2] = clf[i, labels[i]]
    joint = prior * lik
    return joint / joint.sum(-1, keepdims=True)


@pytest.mark.parametrize("mode", ["exclude", "model"])
def test_e_step_for_a_missing_expert_matches_hand_computation(mode):
    q = em.e_step(GATE_LOGITS, CLF_LOGITS, EXPERT_LABELS, LABELS, num_classes=3, smoothing=0.0,
                  method="exact", mc_samples=1, key=jax.random.key(0),
                  annotation_logits=ANNOTATION_LOGITS if mode == "model" else None)
    np.testing.assert_allclose(q, hand_posterior(mode), rtol=1e-5, atol=1e-7)


def test_an_image_without_annotations_trains_the_classifier_with_weight_one():
    q = em.e_step(GATE_LOGITS, CLF_LOGITS, EXPERT_LABELS, LABELS, num_classes=3, smoothing=0.0,
                  method="exact", mc_samples=1, key=jax.random.key(0))
    assert float(q[1, -1]) == 1.0
    per_input = -np.log(softmax(np.asarray(CLF_LOGITS, np.float64)))[[0, 1], np.asarray(LABELS)]
    expected = (float(q[0, -1]) * per_input[0] + 1.0 * per_input[1]) / 2
    assert float(em.classifier_loss(CLF_LOGITS, LABELS, q, weighting="posterior")) == \
        pytest.approx(expected, rel=1e-5)


def test_gate_loss_is_renormalised_over_the_options_present():
    q = jnp.array([[0.0, 0.4, 0.6], [0.0, 0.0, 1.0]])
    available = em.available_options(EXPERT_LABELS)
    logits = np.asarray(GATE_LOGITS, np.float64)
    # Input 0: softmax over expert 1 and the classifier; input 1: the classifier alone.
    present = softmax(logits[0, 1:])
    expected = -(0.4 * np.log(present[0]) + 0.6 * np.log(present[1]) + 0.0) / 2
    loss = em.gating_loss(GATE_LOGITS, q, available)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Its gradient never reaches the logit of a missing expert.
    grad = jax.grad(lambda g: em.gating_loss(g, q, available))(GATE_LOGITS)
    np.testing.assert_array_equal(grad[:, 0], 0.0)
    np.testing.assert_array_equal(grad[1], 0.0)


def test_annotation_loss_averages_over_the_annotations_present():
    expert_labels = jnp.array([[1, MISSING], [MISSING, 0]])
    log_probs = np.log(softmax(np.asarray(ANNOTATION_LOGITS, np.float64)))
    expected = -(log_probs[0, 0, 1] + log_probs[1, 1, 0]) / 2
    assert float(em.annotation_loss(ANNOTATION_LOGITS, expert_labels)) == \
        pytest.approx(expected, rel=1e-5)


def test_manifests_with_missing_annotations_need_the_flag(tiny_dataset):
    truth, experts = tiny_dataset["train_groundtruth"], tiny_dataset["train_experts"]
    entries = load(experts[0])
    dropped = entries.pop(4)["file"]
    dump(experts[0], entries)
    raises_one_line(lambda: load_split(truth, experts), experts[0], os.path.basename(dropped),
                    "--allow-missing-annotations")
    entries[0]["label"] = None
    dump(experts[0], entries)
    raises_one_line(lambda: load_split(truth, experts), experts[0], "entry 0",
                    "'label' must be an integer, got None")
    split = load_split(truth, experts, allow_missing=True)
    missing = np.flatnonzero(split.expert_labels[:, 0] == MISSING)
    assert [os.path.basename(split.files[i]) for i in missing] == sorted(
        os.path.basename(f) for f in (dropped, entries[0]["file"]))
    assert (split.expert_labels[:, 1] != MISSING).all()
    # A null ground-truth label stays an error.
    ground_truth = load(truth)
    ground_truth[2]["label"] = None
    dump(truth, ground_truth)
    raises_one_line(lambda: load_split(truth, experts, allow_missing=True), truth, "entry 2",
                    "'label' must be an integer, got None")


def test_missing_rate_drops_a_seeded_share_and_keeps_the_answers(tmp_path):
    files = [f"{i}.png" for i in range(200)]
    truth = tmp_path / "train_groundtruth.json"
    dump(truth, [{"file": f, "label": i % 4} for i, f in enumerate(files)])
    spec = ExpertSpec.specialist("0-1", 1.0, 0.25)
    full = {e["file"]: e["label"] for e in load(write_experts([str(truth)], spec, seed=3)[0]
                                                             ["path"])}
    result = write_experts([str(truth)], spec, seed=3, missing_rate=0.3)[0]
    assert result["path"].endswith("train_specialist_0-1_1.0_0.25_missing_0.3_3.json")
    assert result["num_missing"] == 60 and result["num_samples"] == 140
    kept = {e["file"]: e["label"] for e in load(result["path"])}
    assert len(kept) == 140 and all(full[f] == label for f, label in kept.items())
    again = write_experts([str(truth)], spec, seed=3, missing_rate=0.3)[0]
    assert load(again["path"]) == load(result["path"])
    other = write_experts([str(truth)], spec, seed=4, missing_rate=0.3)[0]
    assert {e["file"] for e in load(other["path"])} != set(kept)
    raises_one_line(lambda: write_experts([str(truth)], spec, seed=3, missing_rate=1.0),
                    "--missing-rate=1.0", "[0, 1)")


def test_enforced_bounds_that_the_annotations_cannot_meet_are_refused_before_training(
        tiny_dataset):
    truth, experts = tiny_dataset["test_groundtruth"], tiny_dataset["test_experts"]
    dump(experts[0], load(experts[0])[:3])  # Expert 0 annotated 3 of the 10 test images.
    split = load_split(truth, experts, allow_missing=True)
    evaluation = EvaluationOptions(min_share=(0.3, 0, 0), max_share=(1, 1, 1),
                                   test_workload="enforce")
    check_test_workload(evaluation, split)  # 3 of 10: just enough.
    evaluation = EvaluationOptions(min_share=(0.4, 0, 0), test_workload="enforce")
    raises_one_line(lambda: check_test_workload(evaluation, split), truth,
                    "--test-workload enforce", "cannot meet the workload bounds")
