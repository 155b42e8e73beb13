"""Tests of l2d.data.experts: synthetic noise and class-specialist experts as manifests."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import raises_one_line

from l2d.data.experts import (
    ExpertSpec,
    class_specialist,
    format_classes,
    label_noise,
    parse_classes,
    sample_uniforms,
    write_experts,
)
from l2d.data.manifest import load_split, read_manifest

N = 20_000
C = 10


def _tolerance(p, n):
    """Five standard deviations of a mean of n Bernoulli(p) draws (and a floor for p in {0, 1})."""
    return 5 * math.sqrt(p * (1 - p) / n) + 1e-9


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(0)
    return rng.integers(0, C, N), rng.random((N, 2))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.9, 1.0])
def test_label_noise_rate_and_wrong_answers(draws, p):
    labels, uniforms = draws
    answers = label_noise(labels, p, C, uniforms)
    right = answers == labels
    assert abs(right.mean() - (1 - p)) <= _tolerance(p, N)
    # Wrong exactly where the first uniform says so: the true class is never drawn as "wrong".
    np.testing.assert_array_equal(right, uniforms[:, 0] < 1 - p)
    assert answers.min() >= 0 and answers.max() < C
    if p > 0:
        # A wrong answer is uniform over the C - 1 other classes.
        offsets = np.bincount((answers - labels)[~right] % C, minlength=C)
        assert offsets[0] == 0
        share = offsets[1:] / (~right).sum()
        assert np.abs(share - 1 / (C - 1)).max() <= _tolerance(1 / (C - 1), (~right).sum())


@pytest.mark.parametrize("p_in, p_out", [(1.0, 0.1), (0.8, 0.3), (1.0, 0.0)])
def test_class_specialist_rates(draws, p_in, p_out):
    labels, uniforms = draws
    classes = (0, 1, 2, 3, 4)
    answers = class_specialist(labels, classes, p_in, p_out, C, uniforms)
    right = answers == labels
    inside = np.isin(labels, classes)
    assert abs(right[inside].mean() - p_in) <= _tolerance(p_in, inside.sum())
    assert abs(right[~inside].mean() - p_out) <= _tolerance(p_out, (~inside).sum())


def test_specialist_with_p_out_one_over_c_is_uniform_elsewhere(draws):
    labels, uniforms = draws
    answers = class_specialist(labels, (0, 1, 2, 3, 4), 1.0, 1 / C, C, uniforms)
    outside = ~np.isin(labels, (0, 1, 2, 3, 4))
    for true_class in range(5, C):
        given = answers[outside & (labels == true_class)]
        share = np.bincount(given, minlength=C) / len(given)
        assert np.abs(share - 1 / C).max() <= _tolerance(1 / C, len(given))


def test_uniforms_are_stable_and_depend_on_seed_spec_and_key():
    spec = ExpertSpec.noise(0.3)
    u = sample_uniforms(["a.png", "b.png"], 44, spec)
    assert u.shape == (2, 2) and (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(u, sample_uniforms(["a.png", "b.png"], 44, spec))
    np.testing.assert_array_equal(u[::-1], sample_uniforms(["b.png", "a.png"], 44, spec))
    assert not np.array_equal(u, sample_uniforms(["a.png", "b.png"], 45, spec))
    assert not np.array_equal(u, sample_uniforms(["a.png", "b.png"], 44, ExpertSpec.noise(0.4)))
    many = sample_uniforms([f"{i}.png" for i in range(N)], 0, spec)
    assert abs(many.mean() - 0.5) < 0.01 and abs(np.corrcoef(many.T)[0, 1]) < 0.03


def test_spec_names_and_class_sets():
    assert ExpertSpec.noise(0.3).name == "random_noise_0.3"
    assert ExpertSpec.specialist("0-4", 1.0, 0.1).name == "specialist_0-4_1.0_0.1"
    assert ExpertSpec.specialist((7, 0, 2, 2), 1, 0).classes == (0, 2, 7)
    assert parse_classes("0-4") == (0, 1, 2, 3, 4)
    assert parse_classes("0,2,7") == (0, 2, 7)
    assert parse_classes(" 5, 0-2 ,2") == (0, 1, 2, 5)
    # File names carry no commas (the CLI splits file lists on them) and read back.
    assert format_classes((0, 1, 2, 5, 7, 8)) == "0-2+5+7-8"
    assert parse_classes("0-2+5+7-8") == (0, 1, 2, 5, 7, 8)


def _manifest(folder, name, files, labels):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"file": file, "label": int(y)} for file, y in zip(files, labels)], f)
    return path


def _load(path):
    return json.loads(Path(path).read_text())


def _labels_by_file(path):
    return dict(read_manifest(path))


def _relative(path):
    folder = os.path.dirname(path)
    return {os.path.relpath(f, folder): y for f, y in read_manifest(path)}


def test_write_experts_names_accuracy_and_alignment(tmp_path):
    files = [f"images/{i:04d}.png" for i in range(600)]
    labels = np.arange(600) % 5
    train = _manifest(tmp_path, "train_groundtruth.json", files[:400], labels[:400])
    test = _manifest(tmp_path, "test_groundtruth.json", files[400:], labels[400:])
    for file in files:  # load_split checks that the images exist
        os.makedirs(tmp_path / "images", exist_ok=True)
        (tmp_path / file).touch()

    results = write_experts([train, test], ExpertSpec.noise(0.3), seed=44, num_classes=None)

    assert [r["path"] for r in results] == [str(tmp_path / "train_random_noise_0.3_44.json"),
                                            str(tmp_path / "test_random_noise_0.3_44.json")]
    for result, truth in zip(results, (train, test)):
        split = load_split(truth, [result["path"]])
        right = split.expert_labels[:, 0] == split.labels
        assert result["accuracy"] == pytest.approx(right.mean())
        assert abs(result["accuracy"] - 0.7) < 0.12
        assert split.expert_labels.max() < 5  # C = 5 from the labels of both manifests
        # Same files in the same order as the ground truth.
        assert [e["file"] for e in _load(result["path"])] == [e["file"] for e in _load(truth)]

    results = write_experts([train, test], ExpertSpec.specialist("0-1", 1.0, 0.1), seed=44,
                            num_classes=None)
    assert os.path.basename(results[0]["path"]) == "train_specialist_0-1_1.0_0.1_44.json"
    for result in results:
        assert result["accuracy_in"] == 1.0
        assert abs(result["accuracy_out"] - 0.1) < 0.1
        assert result["accuracy"] == pytest.approx(0.4 * 1.0 + 0.6 * result["accuracy_out"])


def test_write_experts_is_deterministic_and_depends_on_the_seed(tmp_path):
    truth = _manifest(tmp_path, "train_groundtruth.json", [f"{i}.png" for i in range(300)],
                      np.arange(300) % 4)
    spec = ExpertSpec.noise(0.5)

    def text(seed):
        written = write_experts([truth], spec, seed=seed, num_classes=None)
        return Path(written[0]["path"]).read_text()

    first, again, other = text(1), text(1), text(2)
    assert first == again and first != other


def test_answers_do_not_depend_on_manifest_order_and_match_across_splits(tmp_path):
    files = [f"img/{i}.png" for i in range(300)]
    labels = np.arange(300) % 6
    spec = ExpertSpec.specialist("0,3", 0.9, 0.2)
    ordered = _manifest(tmp_path / "a", "train_groundtruth.json", files, labels)
    order = np.random.default_rng(0).permutation(300)
    shuffled = _manifest(tmp_path / "b", "train_groundtruth.json", [files[i] for i in order],
                         labels[order])
    # A test manifest that lists some of the same relative names (the same expert on both).
    test = _manifest(tmp_path / "a", "test_groundtruth.json", files[:50], labels[:50])
    out_a = write_experts([ordered, test], spec, seed=3, num_classes=6)
    out_b = write_experts([shuffled], spec, seed=3, num_classes=6)
    answers_a = _relative(out_a[0]["path"])
    assert answers_a == _relative(out_b[0]["path"])
    test_answers = _relative(out_a[1]["path"])
    assert all(test_answers[f] == answers_a[f] for f in test_answers)
    # Different answers for different files: the expert is not the same per position.
    assert len(set(_labels_by_file(out_a[0]["path"]).values())) > 1


def test_output_prefix(tmp_path):
    plain = _manifest(tmp_path, "cifar.json", ["a.png", "b.png"], [0, 1])
    other = _manifest(tmp_path, "val_groundtruth.json", ["a.png", "b.png"], [0, 1])
    results = write_experts([plain, other], ExpertSpec.noise(0.0), seed=0, num_classes=None)
    assert [os.path.basename(r["path"]) for r in results] == [
        "cifar_random_noise_0.0_0.json", "val_random_noise_0.0_0.json"]
    assert all(r["accuracy"] == 1.0 for r in results)



def test_errors(tmp_path):
    truth = _manifest(tmp_path, "train_groundtruth.json", ["a.png", "b.png"], [0, 3])
    raises_one_line(lambda: ExpertSpec.noise(1.5), "1.5", "[0, 1]")
    raises_one_line(lambda: ExpertSpec.noise(float("nan")), "nan")
    raises_one_line(lambda: ExpertSpec.specialist("0-4", 1.0, -0.1), "p_out", "-0.1")
    raises_one_line(lambda: ExpertSpec.specialist((), 1.0, 0.1), "non-empty class set")
    raises_one_line(lambda: ExpertSpec("oracle"), "kind", "oracle")
    raises_one_line(lambda: parse_classes(""), "empty")
    raises_one_line(lambda: parse_classes("4-2"), "4-2")
    raises_one_line(lambda: parse_classes("a,b"), "'a'")
    raises_one_line(lambda: write_experts([truth], ExpertSpec.specialist("2-4", 1.0, 0.1), seed=0,
                                  num_classes=None), "class 4", "[0, 4)")
    raises_one_line(lambda: write_experts([truth], ExpertSpec.noise(0.1), seed=0, num_classes=3),
            str(truth), "label 3", "num_classes=3")
    raises_one_line(lambda: write_experts([str(tmp_path / "missing.json")], ExpertSpec.noise(0.1),
                                  seed=0, num_classes=None), "missing.json", "not found")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    raises_one_line(lambda: write_experts([str(broken)], ExpertSpec.noise(0.1), seed=0,
                                          num_classes=None), "broken.json", "invalid JSON")
    raises_one_line(
        lambda: write_experts([truth], ExpertSpec.noise(0.1), seed=-1, num_classes=None), "seed")
    assert sorted(os.listdir(tmp_path)) == ["broken.json", "train_groundtruth.json"]
