"""Many experts: a simulated crowd (``l2d experts --crowd``), expert file lists given as a
folder or a glob, matched across splits by name, and the summary of a crowd's run."""

import os
import re

import numpy as np
import pytest
from conftest import dump, in_process_cli, load, make_dataset, raises_one_line

from l2d.data.crowd import annotator_accuracies, write_crowd
from l2d.data.expert_files import with_expert_files
from l2d.evaluation import metrics


def test_a_crowd_labels_its_own_share_with_its_own_accuracy(tmp_path):
    data = make_dataset(tmp_path, num_train=400, num_test=200, num_classes=4, num_experts=1)
    results = write_crowd([data["train_groundtruth"], data["test_groundtruth"]],
                          num_annotators=12, per_annotator=200, accuracy=(0.6, 0.9), seed=5)
    accuracies = annotator_accuracies(12, (0.6, 0.9), 5)
    assert np.all((accuracies >= 0.6) & (accuracies <= 0.9)) and np.ptp(accuracies) > 0.1
    truth = {e["file"]: e["label"] for e in load(data["train_groundtruth"])}
    train = sorted((tmp_path).glob("train_crowd12_5_a*.json"))
    assert [p.name for p in train[:2]] == ["train_crowd12_5_a00.json", "train_crowd12_5_a01.json"]
    assert len(train) == 12 and results[0]["files"].endswith("train_crowd12_5_a*.json")
    measured = []
    for path, accuracy in zip(train, accuracies):
        entries = load(path)
        assert len(entries) == 200 and len({e["file"] for e in entries}) == 200
        right = [e["label"] == truth[e["file"]] for e in entries]
        # 200 draws: within 4 standard deviations of the annotator's accuracy.
        assert abs(np.mean(right) - accuracy) < 4 * np.sqrt(accuracy * (1 - accuracy) / 200)
        measured.append(np.mean(right))
    np.testing.assert_allclose(results[0]["accuracy"], measured)
    # Different annotators label different images; the test split has 200: each labels all.
    assert load(train[0]) != load(train[1])
    assert all(len(load(p)) == 200 for p in tmp_path.glob("test_crowd12_5_a*.json"))
    # The same seed writes the same crowd.
    before = load(train[3])
    write_crowd([data["train_groundtruth"]], num_annotators=12, per_annotator=200,
                accuracy=(0.6, 0.9), seed=5)
    assert load(train[3]) == before


def test_the_crowd_command_and_its_errors(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path, num_train=20, num_test=10, num_classes=3, num_experts=1)
    truths = f"{data['train_groundtruth']},{data['test_groundtruth']}"
    code, err = in_process_cli(monkeypatch, capsys, "experts", "--groundtruth", truths,
                               "--crowd", "3", "--per-annotator", "5", "--accuracy", "0.7,0.8")
    assert code == 0, err
    assert len(list(tmp_path.glob("test_crowd3_0_a*.json"))) == 3
    for flags, message in [
        (["--crowd", "3"], "--crowd: needs --per-annotator"),
        (["--crowd", "3", "--per-annotator", "11"], "--per-annotator=11: "),
        (["--crowd", "3", "--per-annotator", "2", "--accuracy", "0.9,0.8"], "--accuracy=0.9,0.8"),
        (["--crowd", "0", "--per-annotator", "2"], "--crowd=0"),
        (["--noise", "0.2", "--per-annotator", "2"], "--per-annotator: only used with --crowd"),
        (["--crowd", "2", "--per-annotator", "2", "--missing-rate", "0.5"], "--missing-rate"),
    ]:
        code, err = in_process_cli(monkeypatch, capsys, "experts", "--groundtruth", truths,
                                   *flags)
        assert code == 2 and err.count("\n") == 1 and message in err, (flags, err)


def expert_folder(tmp_path, names_by_split):
    for split, names in names_by_split.items():
        dump(tmp_path / f"{split}_groundtruth.json", "[]")
        for name in names:
            dump(tmp_path / f"{split}_{name}.json", "[]")
    return str(tmp_path)


def test_a_folder_or_glob_names_the_experts_in_sorted_order_matched_by_name(tmp_path):
    folder = expert_folder(tmp_path, {"train": ["b", "a", "c"], "test": ["c", "a", "b"],
                                      "val": ["a", "c", "b"]})
    values = with_expert_files({"train_files": (folder,), "test_files": (f"{folder}/test_*",),
                                "train_groundtruth_file": f"{folder}/train_groundtruth.json",
                                "test_groundtruth_file": f"{folder}/test_groundtruth.json"})
    assert [os.path.basename(f) for f in values["train_files"]] == [
        "train_a.json", "train_b.json", "train_c.json"]
    assert [os.path.basename(f) for f in values["test_files"]] == [
        "test_a.json", "test_b.json", "test_c.json"]
    # An explicit list stays as typed; on --test the run's recorded experts are matched.
    listed = ("x.json", "y.json")
    assert with_expert_files({"train_files": listed})["train_files"] == listed
    recorded = {"train_files": [f"{folder}/train_c.json", f"{folder}/train_a.json",
                                f"{folder}/train_b.json"]}
    assert [os.path.basename(f) for f in with_expert_files(
        {"test_files": (folder,)}, recorded)["test_files"]] == [
        "test_c.json", "test_a.json", "test_b.json"]
    assert [os.path.basename(f) for f in with_expert_files(
        {"val_files": (folder,)}, recorded)["val_files"]] == ["val_c.json", "val_a.json",
                                                              "val_b.json"]


@pytest.mark.parametrize("test_names, fragment", [
    (["a", "b"], "--test-files: has no manifest of training expert 'c'"),
    (["a", "b", "c", "d"], "--test-files: names expert 'd', which --train-files lacks"),
    (["a", "d"], "expert 'b' (3 experts differ)"),
])
def test_a_missing_or_extra_test_expert_is_one_line(tmp_path, test_names, fragment):
    folder = expert_folder(tmp_path, {"train": ["a", "b", "c"], "test": test_names})
    raises_one_line(lambda: with_expert_files({"train_files": (folder,),
                                               "test_files": (folder,)}), fragment)


def test_a_folder_without_expert_manifests_is_one_line(tmp_path):
    folder = expert_folder(tmp_path, {"train": []})
    raises_one_line(lambda: with_expert_files({"train_files": (folder,)}), folder,
                    "no expert manifests (train_*.json")
    raises_one_line(lambda: with_expert_files({"train_files": (f"{folder}/none_*.json",)}),
                    "none_*.json: no expert manifests")


def test_the_summary_of_a_crowd_lists_the_experts_who_receive_the_most():
    experts = [f"a{k}" for k in range(20)]
    values = {metrics.ACCURACY: 0.8, metrics.COVERAGE: 0.1, metrics.CLF_ACCURACY: 0.4}
    for k in range(20):
        values[metrics.expert_share(k)] = 0.09 if k in (3, 17) else 0.72 / 18
        values[metrics.expert_accuracy_alone(k)] = 0.7
    text = metrics.summary(values, experts)
    assert len(re.findall(r"expert a\d+ alone", text)) == metrics.SUMMARY_EXPERTS
    assert "expert a3 alone 0.700 (receives 0.090)" in text and "a17 alone" in text
    assert f"{20 - metrics.SUMMARY_EXPERTS} more experts receive 0.480 together" in text
    assert len(re.findall(r"expert a\d+ alone", metrics.summary(values, experts[:3]))) == 3
