"""Runs recorded by an earlier l2d keep working: ``train --test``, ``plot``, ``export`` and
``predict`` on a run folder and an MLflow store made by the code of commit f484672.

``tests/data/old_runs_f484672.tar.gz`` holds what two training runs of that commit left in the
folder they were launched from (``tests/data/old_runs_f484672.md`` says exactly how): the tiny
dataset ``data/`` (manifests naming their images relative to themselves), the sqlite store
``mlflow.db`` with its artifacts in ``mlartifacts/`` (each run's MLflow model
``deferral_system``), and the run folders ``artifacts/<run_id>/`` (``config.json`` and orbax
checkpoints of epochs 1 and 2). The runs are ``old-em`` (EM, cnn classifier and gate, experts
named alice and bob, ``--max-share 0.6,0.6,1.0``) and ``old-softmax`` (softmax surrogate, one
cnn), both FINISHED after 2 epochs. They were recorded under ``RECORDED_AT``, which the store
and the models' ``MLmodel`` files hold as absolute paths; ``unpack_old_runs`` extracts them
elsewhere and rewrites that prefix. Each test then works from the unpacked folder, as a user
would from the folder the runs were launched in (default ``./mlflow.db`` and ``./artifacts``,
relative manifest paths in the stored configuration).
"""

import contextlib
import json
import math
import sqlite3
import tarfile
from pathlib import Path

import pytest
from conftest import in_process_cli
from mlflow import MlflowClient

TARBALL = Path(__file__).resolve().parent / "data" / "old_runs_f484672.tar.gz"
# The absolute folder the runs were recorded in (their working directory).
RECORDED_AT = "/tmp/l2d_old_run_record"
RUN_NAMES = ("old-em", "old-softmax")
# Files of the tree that may name RECORDED_AT (MLmodel, orbax's commit_success.txt, ...).
TEXT_SUFFIXES = (".json", ".yaml", ".txt")
# What the runs were trained and tested on, relative to the unpacked folder.
TEST_GROUNDTRUTH = "data/test_groundtruth.json"
TEST_EXPERTS = "data/test_expert_0.json,data/test_expert_1.json"
NUM_TEST = 10
# The metrics `--test` measures, as the runs logged them at their end.
TEST_METRICS = ("accuracy", "coverage/test", "clf_accuracy/all", "clf_accuracy/kept",
                "accuracy_coverage/auc", "expert_0/share", "expert_0/accuracy_received",
                "expert_0/accuracy_alone", "expert_1/share", "expert_1/accuracy_received",
                "expert_1/accuracy_alone")


def unpack_old_runs(destination: Path) -> dict:
    """Extract the recorded runs into ``destination`` and rewrite ``RECORDED_AT`` to it in every
    text value of every table of ``mlflow.db`` and in every text file of the tree.

    Returns ``{"root": Path, "tracking_uri": str, "runs": {run name: run id}}``.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(TARBALL) as tar:
        tar.extractall(destination, filter="data")
    new = str(destination)
    database = destination / "mlflow.db"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            # MLflow declares its text columns VARCHAR(n) or TEXT; typeof() finds them all.
            for column in [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]:
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (RECORDED_AT, new, RECORDED_AT))
        runs = dict(connection.execute("SELECT name, run_uuid FROM runs").fetchall())
    for path in destination.rglob("*"):
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name == "MLmodel"):
            text = path.read_text(encoding="utf-8")
            if RECORDED_AT in text:
                path.write_text(text.replace(RECORDED_AT, new), encoding="utf-8")
    assert sorted(runs) == sorted(RUN_NAMES), runs
    return {"root": destination, "tracking_uri": f"sqlite:///{database}", "runs": runs}


@pytest.fixture
def old_runs(tmp_path, monkeypatch) -> dict:
    """The recorded runs unpacked into ``tmp_path/old``, the current folder, with the run's
    MLflow client and each run's metrics as it logged them (before any command here)."""
    unpacked = unpack_old_runs(tmp_path / "old")
    monkeypatch.chdir(tmp_path / "old")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(unpacked["tracking_uri"])
    unpacked["client"] = client
    unpacked["metrics"] = {name: client.get_run(run_id).data.metrics
                           for name, run_id in unpacked["runs"].items()}
    for run_id in unpacked["runs"].values():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri == (
            f"file://{tmp_path / 'old' / 'mlartifacts' / 'l2d' / run_id / 'artifacts'}")
        assert run.data.tags["checkpoints"] == str(
            tmp_path / "old" / "artifacts" / run_id / "checkpoints")
    return unpacked


def same(a: float, b: float) -> bool:
    """Equal, NaN equal to NaN (a metric with nothing to count)."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def recorded_table(old_runs: dict, name: str) -> dict:
    """The run's ``deferral_table.json`` as it logged it at its end: per true class, how many
    test inputs went to each option."""
    path = old_runs["client"].download_artifacts(old_runs["runs"][name], "deferral_table.json",
                                                 str(old_runs["root"] / "downloads" / name))
    return json.loads(Path(path).read_text())


class KeepOutput:
    """``capsys`` for ``in_process_cli`` that keeps what it read, stdout included."""

    def __init__(self, capsys):
        self.capsys, self.out = capsys, ""

    def readouterr(self):
        captured = self.capsys.readouterr()
        self.out = captured.out
        return captured


def test_the_recording_is_relocated(old_runs):
    """Nothing of the unpacked store or tree still names the folder it was recorded in."""
    root = old_runs["root"]
    with contextlib.closing(sqlite3.connect(root / "mlflow.db")) as connection:
        dump = "\n".join(connection.iterdump())
    assert RECORDED_AT not in dump and str(root) in dump
    for path in root.rglob("*"):
        if path.is_file() and path.name != "mlflow.db":
            assert RECORDED_AT.encode() not in path.read_bytes(), path
    client = old_runs["client"]
    for run_id in old_runs["runs"].values():
        models = client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'")
        assert [m.name for m in models] == ["deferral_system"]
        assert models[0].artifact_location.startswith(f"file://{root}/mlartifacts/")


@pytest.mark.parametrize("name", RUN_NAMES)
def test_test_of_an_old_run_measures_its_final_metrics(old_runs, name, monkeypatch, capsys):
    run_id = old_runs["runs"][name]
    code, stderr = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id", run_id)
    assert code == 0, stderr
    client = old_runs["client"]
    logged = json.loads(Path(client.download_artifacts(
        run_id, "test/test_groundtruth_epoch_2.json", str(old_runs["root"] / "downloads"))
    ).read_text())
    assert logged["checkpoint_epoch"] == 2 and len(logged["routed_to"]) == NUM_TEST
    tested = {k: float("nan") if v is None else v for k, v in logged["metrics"].items()}
    final = old_runs["metrics"][name]
    for metric in TEST_METRICS:
        assert same(tested[metric], final[metric]), (metric, tested[metric], final[metric])
    assert logged["deferral_table"] == recorded_table(old_runs, name)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_plot_of_old_runs_draws_every_metric(old_runs, monkeypatch, capsys):
    runs = old_runs["runs"]
    output = old_runs["root"] / "plots_out"
    code, stderr = in_process_cli(monkeypatch, capsys, "plot", "--run-id",
                                  f"{runs['old-em']},{runs['old-softmax']}",
                                  "--output", str(output))
    assert code == 0, stderr
    expected = {"test_accuracy.png", "test_coverage.png", "train_coverage.png",
                "accuracy_coverage_auc.png", "accuracy_coverage.png",
                "loss_clf.png", "loss_dfr.png",  # EM's own losses
                "loss_surrogate.png"}  # softmax's
    assert {p.name for p in output.iterdir()} == expected
    for file in expected:
        assert (output / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", file


def test_export_of_an_old_run_logs_a_second_model(old_runs, monkeypatch, capsys):
    run_id = old_runs["runs"]["old-em"]
    client = old_runs["client"]
    experiment = client.get_run(run_id).info.experiment_id

    def models():
        return client.search_logged_models(experiment_ids=[experiment],
                                           filter_string=f"source_run_id = '{run_id}'")

    before = {m.model_id for m in models()}
    assert len(before) == 1
    output = KeepOutput(capsys)
    code, stderr = in_process_cli(monkeypatch, output, "export", "--run-id", run_id)
    assert code == 0, stderr
    new = [m for m in models() if m.model_id not in before]
    assert [m.name for m in new] == ["deferral_system"]
    assert output.out.split() == [f"models:/{new[0].model_id}"]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("name", RUN_NAMES)
def test_predict_with_an_old_runs_model_scores_as_its_test(old_runs, name, monkeypatch, capsys):
    run_id = old_runs["runs"][name]
    output = old_runs["root"] / "dec.json"
    code, stderr = in_process_cli(monkeypatch, capsys, "predict", "--run-id", run_id,
                                  "--manifest", TEST_GROUNDTRUTH, "--output", str(output),
                                  "--expert-files", TEST_EXPERTS)
    assert code == 0, stderr
    decisions = json.loads(output.read_text())
    truth = json.loads((old_runs["root"] / TEST_GROUNDTRUTH).read_text())
    assert [Path(d["file"]).name for d in decisions] == [Path(e["file"]).name for e in truth]
    assert len(decisions) == NUM_TEST
    scores = json.loads((old_runs["root"] / "dec_metrics.json").read_text())
    final = old_runs["metrics"][name]
    # The model routes by argmax, as the run's own test did: the same decisions, hence the
    # same numbers.
    assert scores["images"] == NUM_TEST
    assert scores["accuracy"] == final["accuracy"]
    assert scores["coverage"] == final["coverage/test"]
    assert scores["classifier/accuracy_all"] == final["clf_accuracy/all"]
    # Per true class, as many images to each option as in the run's deferral table.
    table = recorded_table(old_runs, name)
    counted = {option: [sum(1 for d, e in zip(decisions, truth)
                            if d["decision"] == option and e["label"] == c)
                        for c in table["class"]]
               for option in table if option != "class"}
    assert counted == {option: table[option] for option in counted}
