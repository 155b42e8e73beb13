"""Data parallelism: 2 forced CPU devices give the 1-device run's losses and parameters."""

import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import cli_env, free_port, make_dataset
from mlflow import MlflowClient

from l2d.evaluation import metrics
from l2d.methods import em

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_dataset(root, num_train=40, num_test=12, num_classes=3, num_experts=2)


def train(data, folder, *extra, env=None):
    argv = [sys.executable, "-m", "l2d", "train",
            "--train-files", ",".join(data["train_experts"]),
            "--train-groundtruth-file", data["train_groundtruth"],
            "--test-files", ",".join(data["test_experts"]),
            "--test-groundtruth-file", data["test_groundtruth"],
            "--clf-width", "4", "--dfr-width", "2", "--no-tqdm", "--seed", "2", *extra]
    folder.mkdir()
    return subprocess.run(argv, cwd=folder, env={**cli_env(), **(env or {})},
                          capture_output=True, text=True, timeout=600)


def run_of(folder):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


def restore_on_one_device(path):
    """A checkpoint's arrays on this process's first device, whatever mesh saved them."""
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return checkpointer.restore(path, target)


def test_two_devices_match_one_device(dataset, tmp_path):
    flags = ("--batch-size", "8", "--num-epochs", "2", "--augment")
    one = train(dataset, tmp_path / "one", *flags)
    two = train(dataset, tmp_path / "two", *flags, env=TWO_DEVICES)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    (_, run_one), (_, run_two) = run_of(tmp_path / "one"), run_of(tmp_path / "two")
    # Sums over devices run in another order than on one device: equal up to float32 rounding.
    for name in (em.CLF_LOSS, em.GATE_LOSS):
        np.testing.assert_allclose(run_two.data.metrics[name], run_one.data.metrics[name],
                                   rtol=1e-4, err_msg=name)
    params = []
    for folder, run in ((tmp_path / "one", run_one), (tmp_path / "two", run_two)):
        state = folder / "artifacts" / run.info.run_id / "checkpoints" / "2" / "state"
        params.append(jax.tree.leaves(restore_on_one_device(state)))
    assert len(params[0]) == len(params[1])
    for a, b in zip(*params):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_batch_size_must_divide_by_the_device_count(dataset, tmp_path):
    result = train(dataset, tmp_path / "odd", "--batch-size", "5", "--num-epochs", "1",
                   env=TWO_DEVICES)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "l2d: error: --batch-size=5: must be divisible by the number of devices, 2"]


def run_processes(folder, *args):
    """``python -m l2d train ARGS`` as processes 0 and 1 of one job on loopback; their outputs."""
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "l2d", "train", *args, "--no-tqdm",
             "--coordinator-address", address, "--num-processes", "2", "--process-id", str(i)],
            cwd=folder, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    return outputs


# Two JAX processes meet over gloo, whose set-up gives up after 30 s: beside another test worker's
# load, one process can reach it that much later (seen once), so this test runs by itself.
@pytest.mark.alone
def test_two_processes_match_one_process_log_one_run_and_resume(dataset, tmp_path):
    flags = ("--batch-size", "8", "--num-epochs", "2", "--checkpoint-every", "1")
    one = train(dataset, tmp_path / "one", *flags)
    assert one.returncode == 0, one.stderr
    folder = tmp_path / "two"
    folder.mkdir()
    outputs = run_processes(
        folder, "--train-files", ",".join(dataset["train_experts"]),
        "--train-groundtruth-file", dataset["train_groundtruth"],
        "--test-files", ",".join(dataset["test_experts"]),
        "--test-groundtruth-file", dataset["test_groundtruth"],
        "--clf-width", "4", "--dfr-width", "2", "--seed", "2", *flags)
    # Only process 0 talks: one run line, one final line (gloo prints its own lines on both).
    assert "l2d: run " in outputs[0][1] and "l2d: run " not in outputs[1][1]
    assert "final test metrics" in outputs[0][0] and "final test metrics" not in outputs[1][0]
    (_, run_one), (client, run_two) = run_of(tmp_path / "one"), run_of(folder)
    assert run_two.info.status == "FINISHED"
    for name in (em.CLF_LOSS, em.GATE_LOSS, metrics.ACCURACY):
        np.testing.assert_allclose(run_two.data.metrics[name], run_one.data.metrics[name],
                                   rtol=1e-4, err_msg=name)
    checkpoints = folder / "artifacts" / run_two.info.run_id / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2"]

    # As if killed after epoch 1's checkpoint (a FINISHED run is not resumed): both processes
    # restore epoch 1 and redo epoch 2: the same final losses again.
    shutil.rmtree(checkpoints / "2")
    client.set_terminated(run_two.info.run_id, "KILLED")
    run_processes(folder, "--resume", "--run-id", run_two.info.run_id)
    resumed = client.get_run(run_two.info.run_id)
    assert resumed.info.status == "FINISHED"
    for name in (em.CLF_LOSS, em.GATE_LOSS, metrics.ACCURACY):
        assert resumed.data.metrics[name] == run_two.data.metrics[name], name
