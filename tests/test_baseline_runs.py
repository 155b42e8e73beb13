"""Pulse runs of the baselines through the real CLI (in this process): train, ``--test`` (the
same numbers), ``--resume`` (the same numbers), the logged model routing the test images as
``--test`` did; and two_stage on the frozen classifier of an earlier run."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import (
    assert_served_as_tested,
    in_process_cli,
    train_argv,
)
from flax import nnx
from mlflow import MlflowClient

from l2d.evaluation import metrics
from l2d.evaluation.calibration import CALIBRATION_FILE
from l2d.parallel import data_parallel
from l2d.run_folder import RunFolder

NETWORKS = {
    "rs": ["--model", "cnn", "--width", "4", "--rs-alpha", "0.5"],
    "asm": ["--model", "cnn", "--width", "4"],
    "confidence": ["--clf-width", "4", "--expert-model", "cnn", "--expert-width", "3"],
    "two_stage": ["--clf-width", "4", "--rejector-model", "cnn", "--rejector-width", "3"],
    "selective": ["--clf-width", "4"],
}
# The methods that estimate each expert's P(right), so log its calibration.
ESTIMATES_EXPERTS = {"asm", "confidence"}


def train(monkeypatch, capsys, data, *flags):
    code, err = in_process_cli(monkeypatch, capsys, "train",
                               *train_argv(data, *flags, "--no-tqdm", models=[])[4:])
    assert code == 0, err
    return err


def newest_run(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time DESC"])[0]


def logged_by_test(client, run_id, tmp_path) -> dict:
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "test"))
    return json.loads(Path(client.download_artifacts(run_id, artifacts[-1], str(tmp_path))
                           ).read_text())["metrics"]


def final_metrics(client, run_id, tmp_path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, "final_metrics.json",
                                                     str(tmp_path))).read_text())


@pytest.mark.parametrize("method", list(NETWORKS))
def test_baseline_trains_tests_resumes_and_serves(method, tiny_dataset, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    train(monkeypatch, capsys, tiny_dataset, "--method", method, *NETWORKS[method],
          "--batch-size", "8", "--num-epochs", "2", "--checkpoint-every", "1", "--augment")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = newest_run(client)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["method"] == method
    final = final_metrics(client, run_id, tmp_path)
    assert metrics.CLF_ECE in final
    assert (metrics.expert_ece(0) in final) == (method in ESTIMATES_EXPERTS)
    assert [m.step for m in client.get_metric_history(run_id, metrics.CLF_ECE)] == [1, 2]
    calibration = json.loads(Path(client.download_artifacts(
        run_id, CALIBRATION_FILE, str(tmp_path))).read_text())
    assert calibration["epoch"] == 2 and sum(calibration["classifier"]["inputs"]) == 10
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert "plots/reliability.png" in plots

    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id", run_id)
    assert code == 0, err
    np.testing.assert_equal(logged_by_test(client, run_id, tmp_path), final)
    # The MLflow model logged at the end of the run routes the test images as --test did.
    assert_served_as_tested(client, run_id, tiny_dataset, tmp_path)

    # As if killed after epoch 1's checkpoint, --resume trains epoch 2 again: the same numbers.
    shutil.rmtree(tmp_path / "artifacts" / run_id / "checkpoints" / "2")
    client.set_terminated(run_id, "KILLED")
    code, err = in_process_cli(monkeypatch, capsys, "train", "--resume", "--run-id", run_id)
    assert code == 0, err
    assert client.get_run(run_id).info.status == "FINISHED"
    np.testing.assert_equal(final_metrics(client, run_id, tmp_path), final)


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def test_two_stage_on_an_earlier_runs_classifier_keeps_it_bit_identical(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train(monkeypatch, capsys, tiny_dataset, "--method", "selective", "--clf-width", "4",
          "--batch-size", "8", "--num-epochs", "1")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    source_id = newest_run(client).info.run_id
    base = ["--method", "two_stage", "--rejector-model", "cnn", "--rejector-width", "3",
            "--batch-size", "8", "--num-epochs", "2"]
    for flags, message in [
            (["--classifier-run", "nosuchrun"], "--classifier-run=nosuchrun: no "),
            (["--classifier-run", source_id, "--clf-width", "4"],
             "--clf-width: not with --classifier-run"),
            (["--classifier-run", source_id, "--norm-mean", "0.5,0.5,0.5", "--norm-std",
              "0.2,0.2,0.2"],
             "--norm-mean=0.5,0.5,0.5: the classifier of --classifier-run")]:
        code, err = in_process_cli(monkeypatch, capsys, "train",
                                   *train_argv(tiny_dataset, *base, *flags, models=[])[4:])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1

    train(monkeypatch, capsys, tiny_dataset, *base, "--classifier-run", source_id)
    run = newest_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["classifier_method"] == "selective"
    assert metrics.CLF_ECE in run.data.metrics and "loss/clf" not in run.data.metrics
    parallel = data_parallel()
    _, source = RunFolder.of("artifacts", source_id).trained_model(parallel)
    _, two_stage = RunFolder.of("artifacts", run.info.run_id).trained_model(parallel)
    # Parameters, BatchNorm statistics and the expert tally: all bit-identical.
    for theirs, ours in zip(leaves(nnx.state(source)), leaves(nnx.state(two_stage.classifier)),
                            strict=True):
        np.testing.assert_array_equal(theirs, ours)
    # The classifier alone is the earlier run's: the same accuracy on the same test split.
    assert run.data.metrics[metrics.CLF_ACCURACY] == client.get_run(
        source_id).data.metrics[metrics.CLF_ACCURACY]
    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id",
                               run.info.run_id)
    assert code == 0, err
