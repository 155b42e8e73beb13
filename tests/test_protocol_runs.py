"""Pulse runs of the benchmark protocol through the real CLI (in this process): NetSimple with
Adam, a validation split held out of the training manifests, the epoch selected on it, the
operating point chosen there, through train, ``--test``, ``--resume`` and the served model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_served_as_tested,
    in_process_cli,
    make_dataset,
    train_argv,
)
from mlflow import MlflowClient

from l2d.evaluation import metrics
from l2d.evaluation.accuracy_coverage import CURVE_FILE
from l2d.evaluation.selection import OFFSET, SELECTED, SELECTED_EPOCH


@pytest.fixture
def dataset16(tmp_path) -> dict:
    """40 train and 10 test RGB 16x16 images (NetSimple needs 16x16), 3 classes, 2 experts."""
    return make_dataset(tmp_path, num_train=40, num_test=10, num_classes=3, num_experts=2,
                        image_size=16)


def train(monkeypatch, capsys, data, *flags) -> tuple[int, str]:
    return in_process_cli(monkeypatch, capsys, "train",
                          *train_argv(data, *flags, "--no-tqdm", models=[])[4:])


def downloaded(client, run_id, path, tmp_path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text())


def history(client, run_id, name) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, name),
                                    key=lambda m: m.step)]


def test_netsimple_adam_selects_on_validation_and_tests_resumes_serves_the_selection(
        dataset16, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = train(monkeypatch, capsys, dataset16, "--method", "softmax", "--model",
                      "netsimple", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0",
                      "--val-fraction", "0.25", "--select-by", "val/accuracy",
                      "--operating-point", "best-val", "--batch-size", "8", "--num-epochs", "3",
                      "--checkpoint-every", "1")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["optimizer"] == "adam"
    val_accuracy = history(client, run_id, "val/accuracy")
    assert len(val_accuracy) == 3 and len(history(client, run_id, "val/coverage")) == 3
    # The first epoch of the best validation accuracy; the run ends with its test metrics.
    selected = int(np.argmax(val_accuracy)) + 1
    assert run.data.metrics[SELECTED_EPOCH] == selected
    assert run.data.metrics[SELECTED + "val/accuracy"] == val_accuracy[selected - 1]
    final = downloaded(client, run_id, "final_metrics.json", tmp_path)
    for name, value in final.items():  # NaN is null in the JSON file.
        np.testing.assert_equal(run.data.metrics[SELECTED + name],
                                np.nan if value is None else value)
    offsets = history(client, run_id, OFFSET)
    assert run.data.metrics[SELECTED + OFFSET] == offsets[selected - 1]
    assert downloaded(client, run_id, CURVE_FILE, tmp_path)["epoch"] == selected

    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id", run_id)
    assert code == 0, err
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "test"))
    tested = downloaded(client, run_id, artifacts[-1], tmp_path)
    assert tested["checkpoint_epoch"] == selected
    assert tested["classifier_offset"] == offsets[selected - 1]
    np.testing.assert_equal(tested["metrics"], final)
    # The served model routes at the same offset: the test images go where --test sent them.
    assert_served_as_tested(client, run_id, dataset16, tmp_path)

    # As if killed after epoch 2's checkpoint (a best of epoch 3 may be there already):
    # --resume trains epoch 3 again, compares it with the best recorded at epoch 2, and ends
    # with the same selection and numbers.
    shutil.rmtree(tmp_path / "artifacts" / run_id / "checkpoints" / "3")
    client.set_terminated(run_id, "KILLED")
    code, err = in_process_cli(monkeypatch, capsys, "train", "--resume", "--run-id", run_id)
    assert code == 0, err
    assert client.get_run(run_id).info.status == "FINISHED"
    np.testing.assert_equal(downloaded(client, run_id, "final_metrics.json", tmp_path), final)
    assert history(client, run_id, "val/accuracy")[-1] == val_accuracy[-1]


def test_a_validation_split_of_its_own_sets_a_coverage_operating_point(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The test manifests double as the validation split: the two are then routed alike.
    code, err = train(monkeypatch, capsys, tiny_dataset, "--method", "ova", "--model", "cnn",
                      "--width", "4", "--optimizer", "adamw", "--lr-schedule", "constant",
                      "--val-groundtruth-file", tiny_dataset["test_groundtruth"],
                      "--val-files", ",".join(tiny_dataset["test_experts"]),
                      "--operating-point", "coverage=0.5", "--batch-size", "8",
                      "--num-epochs", "2")
    assert code == 0, err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    run_id = run.info.run_id
    assert SELECTED_EPOCH not in run.data.metrics  # --select-by last: no selection.
    assert history(client, run_id, "val/coverage") == history(client, run_id, metrics.COVERAGE)
    assert history(client, run_id, "val/accuracy") == history(client, run_id, metrics.ACCURACY)
    curve = downloaded(client, run_id, CURVE_FILE, tmp_path)
    coverage = run.data.metrics[metrics.COVERAGE]
    # The curve point nearest coverage 0.5, at its own offset.
    assert abs(coverage - 0.5) == min(abs(c - 0.5) for c in curve["coverage"])
    assert run.data.metrics[OFFSET] in curve["offset"]


@pytest.mark.parametrize("flags, message", [
    (["--select-by", "val/accuracy"], "--select-by=val/accuracy: needs a validation split"),
    (["--operating-point", "best-val"], "--operating-point=best-val: needs a validation split"),
    (["--val-fraction", "0.2", "--operating-point", "coverage=2"],
     "--operating-point=coverage=2: expected default, best-val or coverage=X"),
    (["--val-fraction", "0.2", "--val-groundtruth-file", "gt.json", "--val-files", "a.json"],
     "--val-fraction=0.2: give it or --val-groundtruth-file, not both"),
    (["--val-fraction", "0.01"], "--val-fraction=0.01: holds out no input of the 20 of"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum: only used by --optimizer sgd"),
    (["--val-fraction", "0.2", "--operating-point", "best-val", "--max-share", "1,1,1",
      "--test-workload", "enforce"], "does not combine with --test-workload enforce"),
])
def test_bad_protocol_flags_are_one_line_errors_that_leave_no_run(
        flags, message, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = train(monkeypatch, capsys, tiny_dataset, "--method", "softmax", "--model",
                      "cnn", "--width", "4", "--num-epochs", "1", *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())
