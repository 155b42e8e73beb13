"""Pulse runs through the real CLI (in this process) with missing annotations: every method with
half of one expert's labels missing trains, counts them and routes around them at test time;
the flag without a missing label changes no number; and a hundred experts, 98% missing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY_MODELS,
    TINY_NETWORK,
    assert_served_as_tested,
    in_process_cli,
    load,
    make_dataset,
    routed_by_test,
    train_argv,
)
from mlflow import MlflowClient

from l2d.data.crowd import write_crowd
from l2d.evaluation import metrics

NETWORKS = {
    "em": TINY_MODELS,
    "softmax": TINY_NETWORK,
    "ova": TINY_NETWORK,
    "rs": TINY_NETWORK,
    "asm": TINY_NETWORK,
    "confidence": ["--clf-width", "4", "--expert-model", "cnn", "--expert-width", "3",
                   "--no-tqdm"],
    "two_stage": ["--clf-width", "4", "--rejector-model", "cnn", "--rejector-width", "3",
                  "--no-tqdm"],
    "selective": ["--clf-width", "4", "--no-tqdm"],
}


def with_half_of_expert_0_missing(data: dict) -> dict:
    """``data`` with every other label of expert 0's manifests null (train and test)."""
    for split in ("train", "test"):
        path = Path(data[f"{split}_experts"][0])
        entries = load(path)
        for entry in entries[::2]:
            entry["label"] = None
        path.write_text(json.dumps(entries))
    return data


def train(monkeypatch, capsys, data, method, *flags) -> str:
    """The run id of a one-epoch run of ``method`` on ``data``."""
    code, err = in_process_cli(monkeypatch, capsys, "train", *train_argv(
        data, "--method", method, "--batch-size", "8", "--num-epochs", "1", *flags,
        models=NETWORKS[method])[4:])
    assert code == 0, err
    client = store()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time DESC"])[0].info.run_id


def store() -> MlflowClient:
    """The client of the CLI's default store, in the current folder (an absolute URI: MLflow
    keeps one store per URI)."""
    return MlflowClient(f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def final_metrics(client, run_id, tmp_path) -> dict:
    return load(client.download_artifacts(run_id, "final_metrics.json", str(tmp_path)))


@pytest.mark.parametrize("method", ["softmax", "ova", "rs", "asm", "confidence", "two_stage",
                                    "selective"])
def test_every_method_trains_and_routes_around_missing_annotations(method, tiny_dataset,
                                                                  tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = with_half_of_expert_0_missing(tiny_dataset)
    run_id = train(monkeypatch, capsys, data, method, "--allow-missing-annotations")
    client = store()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["missing/train/expert_0"] == 10
    assert run.data.metrics["missing/test/expert_0"] == 5
    assert run.data.metrics["missing/test/expert_1"] == 0
    final = final_metrics(client, run_id, tmp_path)
    assert all(np.isfinite(value) for value in final.values() if isinstance(value, float))
    # Expert 0 alone is measured on the 5 test inputs it annotated (odd rows of the manifest).
    truth, annotations = load(data["test_groundtruth"]), load(data["test_experts"][0])
    right = sum(a["label"] == t["label"] for a, t in zip(annotations[1::2], truth[1::2]))
    assert final[metrics.expert_accuracy_alone(0)] == pytest.approx(right / 5)
    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id", run_id)
    assert code == 0, err
    routed = routed_by_test(client, run_id, tmp_path)
    assert all(routed[i] != 0 for i in range(0, 10, 2)), routed


@pytest.mark.parametrize("method", ["em", "softmax"])
def test_the_flag_without_a_missing_label_changes_no_number(method, tiny_dataset, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    client = store()
    without = final_metrics(client, train(monkeypatch, capsys, tiny_dataset, method), tmp_path)
    flagged = final_metrics(client, train(monkeypatch, capsys, tiny_dataset, method,
                                          "--allow-missing-annotations"), tmp_path)
    assert {name: value for name, value in flagged.items()
            if not name.startswith("missing/")} == without
    assert {value for name, value in flagged.items() if name.startswith("missing/")} <= {0.0}


def test_a_hundred_experts_98_percent_missing_train_with_bounds_test_resume_and_serve(
        tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path, num_train=50, num_test=10, num_classes=3, num_experts=1)
    # In training each annotator labels 1 of the 50 images (2%); in testing every image, so
    # that the served model, which knows no annotations, routes as --test does.
    for truth, per_annotator in ((data["train_groundtruth"], 1), (data["test_groundtruth"], 10)):
        write_crowd([truth], num_annotators=100, per_annotator=per_annotator,
                    accuracy=(0.6, 0.95), seed=0)
    data = {**data, "train_experts": [str(tmp_path / "train_crowd100_0_a*.json")],
            "test_experts": [str(tmp_path / "test_crowd100_0_a*.json")]}
    max_share = ",".join(["0.1"] * 100 + ["0.5"])
    monkeypatch.chdir(tmp_path)
    run_id = train(monkeypatch, capsys, data, "em", "--allow-missing-annotations",
                   "--max-share", max_share, "--test-workload", "enforce", "--num-epochs", "2",
                   "--checkpoint-every", "1")
    client = store()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sum(run.data.metrics[f"missing/train/expert_{k}"] for k in range(100)) == 100 * 49
    final = final_metrics(client, run_id, tmp_path)
    # Enforced at test time: the classifier keeps at most half of the 10 test images.
    assert final[metrics.COVERAGE] <= 0.5 and 0 <= final[metrics.ACCURACY] <= 1
    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id", run_id)
    assert code == 0, err
    assert_served_as_tested(client, run_id, {**data, "test_experts": [None] * 100}, tmp_path)
    shutil.rmtree(tmp_path / "artifacts" / run_id / "checkpoints" / "2")
    client.set_terminated(run_id, "KILLED")
    code, err = in_process_cli(monkeypatch, capsys, "train", "--resume", "--run-id", run_id)
    assert code == 0, err
    np.testing.assert_equal(final_metrics(client, run_id, tmp_path), final)
