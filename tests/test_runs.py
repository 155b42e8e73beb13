"""End-to-end runs of the real CLI with real MLflow stores: pulse, server, SIGKILL + resume."""

import builtins
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (
    TINY_NETWORK,
    assert_served_as_tested,
    cli_env,
    free_port,
    in_process_cli,
    make_dataset,
    only_run,
    run_cli,
    train_argv,
)
from mlflow import MlflowClient

from l2d import training
from l2d.data.manifest import load_split, read_manifest
from l2d.errors import Interrupted
from l2d.evaluation import metrics
from l2d.methods import em
from l2d.methods.options import SURROGATE_LOSS, TRAIN_COVERAGE
from l2d.signals import StopRequests


def final_metrics(client: MlflowClient, run_id: str, tmp_path: Path) -> dict:
    path = client.download_artifacts(run_id, "final_metrics.json", str(tmp_path))
    return json.loads(Path(path).read_text())


def logged_by_test(result, client: MlflowClient, run_id: str, tmp_path: Path) -> dict:
    """What ``--test`` logged (its metrics, with ``checkpoint_epoch``) after checking that it
    printed them as ``train`` does: the summary, then every metric, NaN as ``nan``."""
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("system accuracy ") and lines[-1].startswith(
        "l2d: test metrics: accuracy=")
    assert "null" not in result.stdout
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "test"))
    logged = json.loads(Path(client.download_artifacts(run_id, artifacts[-1], str(tmp_path))
                             ).read_text())
    return {"checkpoint_epoch": logged["checkpoint_epoch"], **logged["metrics"]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_dataset(root, num_train=40, num_test=12, num_classes=3, num_experts=2)


def test_pulse_run_logs_everything_to_a_local_store(dataset, tmp_path):
    trained = run_cli(train_argv(dataset, "--batch-size", "8", "--num-epochs", "3",
                       "--checkpoint-every", "2", "--augment", "--e-step", "mc"), tmp_path,
            # Sample system metrics often enough for a run of seconds (default: every 10 s).
            MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2",
            MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = only_run(client)
    assert run.info.status == "FINISHED"
    # It ends with the summary a person reads, then every metric (NaN as nan).
    printed = trained.stdout.strip().splitlines()
    assert printed[0].startswith("system accuracy ") and " at coverage " in printed[0]
    assert printed[1].startswith("classifier alone ") and "; expert train_expert_1 alone " in (
        printed[1])
    assert printed[2].startswith("deferral ")
    assert printed[3].startswith("l2d: final test metrics: accuracy=")
    # The printed address opens MLflow's model-training view of the run.
    assert (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
            f"{run.info.run_id}?workflowType=machine_learning") in trained.stderr
    for name in (em.CLF_LOSS, em.GATE_LOSS, TRAIN_COVERAGE, metrics.COVERAGE, metrics.ACCURACY,
                 metrics.CLF_ACCURACY, metrics.expert_share(0), metrics.expert_accuracy_received(1),
                 metrics.AUC, "loader/wait_fraction"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
    assert all(0 <= m.value < 1 for m in
               client.get_metric_history(run.info.run_id, "loader/wait_fraction"))
    assert run.data.metrics["startup/first_step_s"] > 0
    params = run.data.params
    assert params["train_groundtruth_file"] == dataset["train_groundtruth"]
    assert params["test_files"] == str(tuple(dataset["test_experts"]))
    assert params["num_classes"] == "3" and params["e_step"] == "mc"
    assert params["method"] == "em" and "width" not in params
    # The manifests of both splits are the run's dataset inputs, named and hashed.
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    for context in ("train", "test"):
        split = load_split(dataset[f"{context}_groundtruth"], dataset[f"{context}_experts"])
        folder = Path(dataset[f"{context}_groundtruth"]).parent.name
        assert inputs[context].name == split.dataset_name() == f"{folder}/{context}_groundtruth"
        assert inputs[context].digest == split.digest()
        assert dataset[f"{context}_groundtruth"] in inputs[context].source
    assert inputs["train"].digest != inputs["test"].digest
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "final_metrics.json", "deferral_table.json",
            "accuracy_coverage.json"} <= artifacts
    final = final_metrics(client, run.info.run_id, tmp_path)
    assert final[metrics.ACCURACY] == run.data.metrics[metrics.ACCURACY]
    curve = json.loads(Path(client.download_artifacts(
        run.info.run_id, "accuracy_coverage.json", str(tmp_path))).read_text())
    assert curve["epoch"] == 3 and curve["auc"] == pytest.approx(final[metrics.AUC])
    # The default decision is a point of the curve.
    points = set(zip(curve["coverage"], curve["accuracy"]))
    assert any(abs(c - final[metrics.COVERAGE]) < 1e-9 and abs(a - final[metrics.ACCURACY]) < 1e-9
               for c, a in points)
    checkpoints = Path(run.data.tags["checkpoints"])
    assert checkpoints == tmp_path / "artifacts" / run.info.run_id / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "3"]
    # The system metrics monitor ran alongside (psutil is installed).
    assert any(name.startswith("system/") for name in run.data.metrics)

    # --test re-evaluates the last checkpoint: the same numbers, logged without reopening the run.
    result = run_cli([sys.executable, "-m", "l2d", "train", "--test", "--run-id", run.info.run_id],
                     tmp_path)
    printed = logged_by_test(result, client, run.info.run_id, tmp_path)
    assert printed.pop("checkpoint_epoch") == 3
    np.testing.assert_equal(printed, final)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    logged = client.download_artifacts(run.info.run_id, "test/test_groundtruth_epoch_3.json",
                                       str(tmp_path))
    assert json.loads(Path(logged).read_text())["deferral_table"]["class"] == [0, 1, 2]


@pytest.mark.parametrize("method", ["softmax", "ova"])
def test_surrogate_method_trains_evaluates_resumes_and_refuses_another_method(
        dataset, tmp_path, method):
    # ova's test split (and its logged model's batches) are assigned within share bounds.
    bounds = ["--max-share", "0.4,0.4,1", "--test-workload", "enforce"] if method == "ova" else []
    run_cli(train_argv(dataset, "--method", method, "--batch-size", "8", "--num-epochs", "2",
                       "--checkpoint-every", "1", "--augment", *bounds, models=TINY_NETWORK),
            tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = only_run(client)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["method"] == method
    # Only the flags this method reads are logged as params.
    assert run.data.params["width"] == "4" and "clf_width" not in run.data.params
    for name in (SURROGATE_LOSS, TRAIN_COVERAGE, metrics.ACCURACY, metrics.AUC):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name
    assert em.CLF_LOSS not in run.data.metrics
    final = final_metrics(client, run_id, tmp_path)

    result = run_cli([sys.executable, "-m", "l2d", "train", "--test", "--run-id", run_id],
                     tmp_path)
    printed = logged_by_test(result, client, run_id, tmp_path)
    assert printed.pop("checkpoint_epoch") == 2
    np.testing.assert_equal(printed, final)
    # The MLflow model logged at the end of the run routes the test images as --test did.
    assert_served_as_tested(client, run_id, dataset, tmp_path)

    # As if killed after epoch 1's checkpoint (a FINISHED run is not resumed), --resume trains
    # epoch 2 again: the same numbers.
    checkpoints = tmp_path / "artifacts" / run_id / "checkpoints"
    shutil.rmtree(checkpoints / "2")
    client.set_terminated(run_id, "KILLED")
    run_cli([sys.executable, "-m", "l2d", "train", "--resume", "--run-id", run_id], tmp_path)
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    np.testing.assert_equal(final_metrics(client, run_id, tmp_path), final)
    assert resumed.data.metrics[SURROGATE_LOSS] == run.data.metrics[SURROGATE_LOSS]

    # A configuration that names another method than the checkpoint's is refused.
    config_file = tmp_path / "artifacts" / run_id / "config.json"
    other = "ova" if method == "softmax" else "softmax"
    config_file.write_text(config_file.read_text().replace(f'"{method}"', f'"{other}"'))
    refused = subprocess.run([sys.executable, "-m", "l2d", "train", "--test", "--run-id", run_id],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"l2d: error: {checkpoints / '2'}: made with --method {method}, not {other}; it cannot "
        f"be resumed or evaluated as {other}"]


def test_em_with_missing_annotations_and_workload_bounds_trains_tests_and_resumes(
        dataset, tmp_path):
    # Half of expert 0's annotations are missing in both splits: omitted, or "label": null.
    data = dict(dataset)
    for split, size in (("train", 40), ("test", 12)):
        entries = [{"file": file, "label": label} for file, label in
                   read_manifest(dataset[f"{split}_experts"][0])]
        for entry in entries[: size // 4]:
            entry["label"] = None
        path = tmp_path / f"{split}_expert_0_half.json"
        path.write_text(json.dumps(entries[: 3 * size // 4]))
        data[f"{split}_experts"] = [str(path), dataset[f"{split}_experts"][1]]
    bounds = ["--max-share", "0.25,0.5,1", "--test-workload", "enforce"]
    argv = train_argv(data, "--allow-missing-annotations", "--missing", "model",
                      "--ann-width", "2", *bounds, "--batch-size", "8", "--num-epochs", "2",
                      "--checkpoint-every", "1")
    run_cli(argv, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = only_run(client)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.metrics[metrics.missing_annotations("train", 0)] == 20
    assert run.data.metrics[metrics.missing_annotations("test", 0)] == 6
    assert run.data.metrics[metrics.missing_annotations("test", 1)] == 0
    assert [m.step for m in client.get_metric_history(run_id, em.ANNOTATION_LOSS)] == [1, 2]
    final = final_metrics(client, run_id, tmp_path)
    # Enforced on the 12 test inputs: expert 0 takes at most 3, expert 1 at most 6.
    assert final[metrics.expert_share(0)] <= 3 / 12 and final[metrics.expert_share(1)] <= 6 / 12
    assert final[metrics.expert_accuracy_alone(0)] == pytest.approx(
        np.mean([label == truth for (_, label), (_, truth) in zip(
            read_manifest(data["test_experts"][0], allow_null_labels=True)[3:],
            read_manifest(dataset["test_groundtruth"])[3:9])]))

    result = run_cli([sys.executable, "-m", "l2d", "train", "--test", "--run-id", run_id],
                     tmp_path)
    printed = logged_by_test(result, client, run_id, tmp_path)
    assert printed.pop(metrics.missing_annotations("test", 0)) == 6
    assert printed.pop(metrics.missing_annotations("test", 1)) == 0
    assert printed.pop("checkpoint_epoch") == 2
    np.testing.assert_equal(printed, final)

    shutil.rmtree(tmp_path / "artifacts" / run_id / "checkpoints" / "2")
    client.set_terminated(run_id, "KILLED")  # as if killed after epoch 1's checkpoint
    run_cli([sys.executable, "-m", "l2d", "train", "--resume", "--run-id", run_id], tmp_path)
    assert client.get_run(run_id).info.status == "FINISHED"
    np.testing.assert_equal(final_metrics(client, run_id, tmp_path), final)


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"MLflow server at {url} not healthy after {timeout_s} s")


def test_run_logged_to_a_real_mlflow_server(dataset, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        wait_healthy(url, server)
        run_cli(train_argv(dataset, "--batch-size", "8", "--num-epochs", "2",
                           "--tracking-uri", url), tmp_path)
        client = MlflowClient(url)
        run = only_run(client)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, metrics.ACCURACY)
        assert [m.step for m in history] == [1, 2]
        assert final_metrics(client, run.info.run_id, tmp_path)[metrics.ACCURACY] == pytest.approx(
            run.data.metrics[metrics.ACCURACY])
        # Artifacts went through the server into its own folder, not the client's.
        assert list((tmp_path / "served").rglob("final_metrics.json"))
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


# The run that the interrupted ones must equal once resumed: augmentation and Monte Carlo draws
# too, 5 steps per epoch.
RESUMED_FLAGS = ("--batch-size", "8", "--num-epochs", "12", "--checkpoint-every", "1",
                 "--keep-checkpoints", "2", "--augment", "--e-step", "mc", "--seed", "3")


@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory):
    """(final metrics, last training losses) of the uninterrupted run of ``RESUMED_FLAGS``."""
    folder = tmp_path_factory.mktemp("straight")
    run_cli(train_argv(dataset, *RESUMED_FLAGS), folder)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run = only_run(client)
    return (final_metrics(client, run.info.run_id, folder),
            {name: run.data.metrics[name] for name in (em.CLF_LOSS, em.GATE_LOSS)})


def assert_equals_straight_run(client, run_id, tmp_path, straight_run):
    final, losses = straight_run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    np.testing.assert_equal(final_metrics(client, run_id, tmp_path), final)
    for name, value in losses.items():
        assert run.data.metrics[name] == value, name


def test_sigkill_then_resume_equals_an_uninterrupted_run(dataset, tmp_path, straight_run):
    argv = train_argv(dataset, *RESUMED_FLAGS)
    victim = subprocess.Popen(argv, cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    artifacts = tmp_path / "artifacts"
    deadline = time.monotonic() + 300
    while not list(artifacts.glob("*/checkpoints/2")):
        assert victim.poll() is None, victim.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (run_folder,) = artifacts.iterdir()
    run_id = run_folder.name
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kept = sorted(int(p.name) for p in (run_folder / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] < 12, "the run finished before it was killed"
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL can't be caught.

    run_cli([sys.executable, "-m", "l2d", "train", "--resume", "--run-id", run_id,
             "--no-tqdm"], tmp_path)
    assert_equals_straight_run(client, run_id, tmp_path, straight_run)


def interrupting(make_train_step, *, after_step: int):
    """``make_train_step`` whose step sends this process a SIGINT after global step
    ``after_step``, as a Ctrl-C in the middle of an epoch."""
    def make(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def interrupted_step(state, totals, batch, global_step):
            result = step(state, totals, batch, global_step)
            if global_step == after_step:
                os.kill(os.getpid(), signal.SIGINT)
            return result

        interrupted_step.lower = step.lower
        return interrupted_step

    return make


def test_ctrl_c_mid_epoch_saves_and_resume_equals_an_uninterrupted_run(
        dataset, tmp_path, monkeypatch, capsys, straight_run):
    monkeypatch.chdir(tmp_path)
    # Global step 7 is the third of epoch 2; epoch 1's checkpoint is older.
    monkeypatch.setattr(training, "make_train_step",
                        interrupting(training.make_train_step, after_step=7))
    code, stderr = in_process_cli(monkeypatch, capsys, *train_argv(dataset, *RESUMED_FLAGS)[3:])
    assert code == 130
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = only_run(client).info.run_id
    resume = shlex.join([sys.executable, "-m", "l2d", "train", "--resume", "--run-id", run_id])
    assert stderr.strip().splitlines()[-2:] == [
        f"l2d: interrupted: run {run_id} is KILLED and its state in epoch 2 after step 3 of 5 "
        "is saved", f"l2d: continue it with: {resume}"]
    assert "Traceback" not in stderr
    assert client.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, metrics.ACCURACY)] == [1]
    checkpoints = tmp_path / "artifacts" / run_id / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "interrupted"]

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert in_process_cli(monkeypatch, capsys, "train", "--resume", "--run-id", run_id)[0] == 0
    assert_equals_straight_run(client, run_id, tmp_path, straight_run)
    # The later epoch checkpoints superseded the interrupted state.
    assert not (checkpoints / "interrupted").exists()


def test_a_full_disk_fails_the_run_at_once_and_keeps_the_last_checkpoint(
        dataset, tmp_path, monkeypatch, capsys):
    """Writing epoch 2's checkpoint fails as on a full disk: one line, the run FAILED before
    epoch 3 trains, epoch 1's checkpoint intact and nothing half-written left."""
    monkeypatch.chdir(tmp_path)
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if "/checkpoints/2" in str(file) and any(c in mode for c in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    code, stderr = in_process_cli(monkeypatch, capsys, *train_argv(
        dataset, "--batch-size", "8", "--num-epochs", "4", "--checkpoint-every", "1")[3:])
    monkeypatch.setattr(builtins, "open", real_open)
    assert code == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = only_run(client)
    checkpoints = tmp_path / "artifacts" / run.info.run_id / "checkpoints"
    assert stderr.strip().splitlines()[-1] == (
        f"l2d: error: {checkpoints}: cannot save the checkpoint after epoch 2 (No space left on "
        "device); the last good checkpoint, epoch 1, is kept")
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, metrics.ACCURACY)] == [1, 2]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1"]
    # Epoch 1's checkpoint still restores: --test evaluates it.
    assert in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id",
                          run.info.run_id)[0] == 0


def test_diverging_run_stops_with_a_clear_message_and_ends_failed(dataset, tmp_path):
    # One step per epoch: an update can make the weights non-finite while the loss, computed
    # before it, is still finite; no checkpoint may then store those weights.
    result = subprocess.run(train_argv(dataset, "--batch-size", "40", "--num-epochs", "4",
                                       "--lr", "1e30", "--checkpoint-every", "1"),
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("l2d: error: training diverged: epoch ")
    assert "non-finite gradients or weights" in lines[-1]
    assert "Traceback" not in result.stderr
    run = only_run(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert run.info.status == "FAILED"
    for saved in (tmp_path / "artifacts").glob("*/checkpoints/*/state"):
        arrays = jax.tree.leaves(ocp.StandardCheckpointer().restore(saved))
        assert all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.floating))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_in_the_first_epochs_saves_the_run_and_prints_how_to_resume_it(
        dataset, tmp_path, signum):
    # No epoch checkpoint yet (every 5 epochs): without the interrupt's own, nothing would be
    # left to resume, test or export.
    victim = subprocess.Popen(
        train_argv(dataset, "--batch-size", "2", "--num-epochs", "6", "--checkpoint-every", "5"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in victim.stderr:
        if "first training step done" in line:
            victim.send_signal(signum)
            break
    _, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 130, stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = only_run(client).info.run_id
    saved, resume = stderr.strip().splitlines()[-2:]
    assert saved.startswith(f"l2d: interrupted: run {run_id} is KILLED and its state ")
    assert resume == (f"l2d: continue it with: {sys.executable} -m l2d train --resume --run-id "
                      f"{run_id}")
    assert "Traceback" not in stderr
    assert client.get_run(run_id).info.status == "KILLED"
    assert list((tmp_path / "artifacts" / run_id / "checkpoints" / "interrupted").iterdir())
    if signum == signal.SIGTERM:
        # The printed command, as it is, finishes the run.
        run_cli(shlex.split(resume.removeprefix("l2d: continue it with: ")), tmp_path)
        assert client.get_run(run_id).info.status == "FINISHED"


def test_a_second_signal_stops_at_once():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_long_run_says_how_long_it_will_take(capsys):
    # Resumed after 10 of 15 steps: 5 steps in 30 s, then 22 s of evaluation.
    training.report_duration(1, train_seconds=30.0, eval_seconds=22.0, steps_trained=5,
                          steps_per_epoch=15, epochs_left=100)
    assert capsys.readouterr().err == (
        "l2d: epoch 1 took 112 s on the cpu; the 99 epochs left take about 3.1 h at this pace "
        "(the README's \"Training\" shows CPU-sized networks)\n")
    # A short one says nothing.
    training.report_duration(1, train_seconds=1.0, eval_seconds=0.1, steps_trained=15,
                          steps_per_epoch=15, epochs_left=100)
    assert capsys.readouterr().err == ""
