"""The trained system outside training, on one tiny EM run with enforced workload bounds: the
MLflow model ``deferral_system`` from Python, ``l2d predict`` and ``l2d export`` from the shell,
and ``mlflow models serve`` over HTTP, under load."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from conftest import (
    MEASURED,
    cli_env,
    decoded_test_split,
    expert_indices,
    free_port,
    in_process_cli,
    load_deferral_system,
    make_dataset,
    only_run,
    raises_one_line,
    routed_by_test,
    run_cli,
    train_argv,
)
from mlflow import MlflowClient
from PIL import Image

import l2d
from l2d import cli
from l2d.evaluation import metrics
from l2d.evaluation.plot import CURVE_PLOT, RELIABILITY_PLOT, method_plots
from l2d.tracking import MEASUREMENTS_TAG

NUM_EXPERTS = 2
EXPERTS = ("ann", "bob")  # --expert-names
REGISTERED = "tiny-system"
# The load test: requests, concurrent clients, and the largest batch of one request.
REQUESTS, CLIENTS, MAX_BATCH = 500, 8, 16


@pytest.fixture(scope="module")
def em_run(tmp_path_factory):
    """A 2-epoch EM run whose test split is assigned within share bounds, registered as
    ``REGISTERED``, then evaluated once with ``--test``."""
    root = tmp_path_factory.mktemp("serving")
    data = make_dataset(root / "data", num_train=40, num_test=12, num_classes=3,
                        num_experts=NUM_EXPERTS)
    run_cli(train_argv(data, "--batch-size", "8", "--num-epochs", "2", "--max-share",
                       "0.4,0.4,1", "--test-workload", "enforce", "--register-model",
                       REGISTERED, "--expert-names", ",".join(EXPERTS), "--run-name",
                       "tiny-em"), root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = only_run(client).info.run_id
    run_cli([sys.executable, "-m", "l2d", "train", "--test", "--run-id", run_id], root)
    files, images = decoded_test_split(data)
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "test"))
    tested = json.loads(open(client.download_artifacts(run_id, artifacts[-1], str(root))).read())
    return types.SimpleNamespace(
        root=root, data=data, uri=uri, client=client, run_id=run_id, files=files,
        images=images, model=load_deferral_system(uri, run_id), tested=tested,
        expected=expert_indices(routed_by_test(client, run_id, root), NUM_EXPERTS))


def l2d_cli(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l2d", *argv], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def test_run_logs_its_model_and_plots_and_registers_the_model(em_run):
    info = em_run.model.metadata
    assert info.signature is not None and info.saved_input_example_info is not None
    assert [spec.name for spec in info.signature.outputs.inputs] == [
        "decision", "expert_index", "label", "score/ann", "score/bob", "score/classifier"]
    run = em_run.client.get_run(em_run.run_id)
    assert run.info.run_name == "tiny-em"
    assert list(em_run.tested["deferral_table"])[1:] == ["ann", "bob", "classifier"]
    plots = {os.path.basename(f.path) for f in em_run.client.list_artifacts(em_run.run_id,
                                                                          "plots")}
    tags = em_run.client.get_run(em_run.run_id).data.tags
    assert plots == {plot.file for plot in method_plots("em", tags[MEASUREMENTS_TAG])} | {
        CURVE_PLOT, RELIABILITY_PLOT}
    versions = em_run.client.search_model_versions(f"name = '{REGISTERED}'")
    assert [version.run_id for version in versions] == [em_run.run_id]


def test_model_routes_pixels_and_paths_as_test_did(em_run):
    decisions = em_run.model.predict(em_run.images)
    assert decisions["expert_index"].tolist() == em_run.expected
    experts = sorted(set(decisions.columns) - {"decision", "expert_index", "label"})
    names = [name.removeprefix("score/") for name in experts]
    assert names == ["ann", "bob", "classifier"]
    assert set(decisions["decision"]) <= set(names)
    kept = decisions["expert_index"] == -1
    assert (decisions["decision"][kept] == "classifier").all()
    assert (decisions["label"][~kept] == "").all() and decisions["label"][kept].isin(
        ["0", "1", "2"]).all()
    from_paths = em_run.model.predict(np.array(em_run.files, dtype=object))
    assert from_paths.equals(decisions)
    # The enforced bounds hold on the batch: at most ceil(0.4 * 12) = 5 images per expert.
    assert max(np.bincount(decisions["expert_index"][~kept], minlength=2)) <= 5
    # "argmax" routes each image to its highest score instead.
    argmax = em_run.model.predict(em_run.images, params={"workload": "argmax"})
    scores = argmax[[c for c in argmax.columns if c.startswith("score/")]].to_numpy()
    highest = np.argmax(scores, axis=1)
    assert argmax["expert_index"].tolist() == [-1 if k == NUM_EXPERTS else k for k in highest]


@pytest.mark.parametrize("model_input, message", [
    (np.zeros((2, 7, 7, 3), np.uint8),
     "input: images of 7x7x3; this system was trained on 8x8x3 (HxWxC)"),
    (np.zeros((1, 8, 8, 1), np.uint8),
     "input: images of 8x8x1; this system was trained on 8x8x3 (HxWxC)"),
    (np.array(["/nowhere/a.png"], dtype=object),
     "input: entry 0 ('/nowhere/a.png'): image file not found"),
    # Never a silent cast: pixels scaled to [0, 1], NaN, integers out of range.
    (np.full((2, 8, 8, 3), 0.87), "input: pixels are uint8 in 0..255; got float values such as "
     "0.87"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "input: pixels are uint8 in 0..255; got float "
     "values such as nan"),
    (np.full((1, 8, 8, 3), 300), "input: pixels are uint8 in 0..255; got integer values such as "
     "300"),
])
def test_model_input_errors_name_the_problem(em_run, model_input, message):
    with pytest.raises(mlflow.exceptions.MlflowException) as error:
        em_run.model.predict(model_input)
    assert str(error.value) == message


def test_model_answers_an_empty_batch_and_integer_pixels(em_run):
    for empty in (np.zeros((0, 8, 8, 3), np.uint8), np.array([]), np.array([], dtype=object)):
        decisions = em_run.model.predict(empty)
        assert len(decisions) == 0 and list(decisions.columns)[:3] == [
            "decision", "expert_index", "label"]
    # Integers in 0..255 (what a JSON body of pixels becomes) are the same pixels.
    assert em_run.model.predict(em_run.images.astype(np.int64)).equals(
        em_run.model.predict(em_run.images))


def test_predict_command_writes_the_decisions_of_test(em_run, tmp_path, monkeypatch, capsys):
    output = tmp_path / "decisions.json"
    # The test split's ground truth (labelled) and its experts' answers.
    result = l2d_cli("predict", "--run-id", em_run.run_id, "--manifest",
                     em_run.data["test_groundtruth"], "--expert-files",
                     ",".join(em_run.data["test_experts"]), "--output", str(output),
                     cwd=em_run.root)
    assert result.returncode == 0, result.stderr
    decisions = json.loads(output.read_text())
    assert [d["file"] for d in decisions] == em_run.files
    assert [d["expert_index"] for d in decisions] == em_run.expected
    options = list(decisions[0]["scores"])
    counts = np.bincount([k if k >= 0 else NUM_EXPERTS for k in em_run.expected],
                         minlength=NUM_EXPERTS + 1)
    printed = result.stdout.strip().splitlines()
    assert printed[0] == (
        f"12 images: {options[0]} {counts[0]}, {options[1]} {counts[1]}, classifier "
        f"{counts[2]}; decisions in {output}")
    # Scored against the labels and the experts' answers: the numbers of --test.
    scores = json.loads((tmp_path / "decisions_metrics.json").read_text())
    tested = em_run.tested["metrics"]
    assert scores["accuracy"] == pytest.approx(tested[metrics.ACCURACY], abs=1e-12)
    assert scores["coverage"] == pytest.approx(tested[metrics.COVERAGE], abs=1e-12)
    assert scores["classifier/accuracy_all"] == pytest.approx(tested[metrics.CLF_ACCURACY],
                                                              abs=1e-12)
    for k, name in enumerate(options[:NUM_EXPERTS]):
        assert scores[f"{name}/share"] == pytest.approx(tested[metrics.expert_share(k)])
    assert printed[1].startswith(f"system accuracy {tested[metrics.ACCURACY]:.3f}, coverage ")
    assert printed[1].endswith(f"in {tmp_path / 'decisions_metrics.json'}")

    folder = tmp_path / "new"
    folder.mkdir()
    for file in em_run.files[:4]:
        (folder / os.path.basename(file)).write_bytes(open(file, "rb").read())
    (folder / "notes.txt").write_text("not an image")
    monkeypatch.chdir(em_run.root)
    code, stderr = in_process_cli(monkeypatch, capsys, "predict", "--run-id", em_run.run_id,
                                  "--images", str(folder), "--output",
                                  str(tmp_path / "folder.json"), "--workload", "argmax")
    assert code == 0, stderr
    routed = {os.path.basename(d["file"]): d["expert_index"]
              for d in json.loads((tmp_path / "folder.json").read_text())}
    argmax = em_run.model.predict(em_run.images[:4], params={"workload": "argmax"})
    assert routed == dict(zip(map(os.path.basename, em_run.files[:4]), argmax["expert_index"]))


def test_predict_command_errors_are_one_line(em_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(em_run.root)
    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    Image.new("RGB", (7, 7)).save(tmp_path / "small" / "a.png")
    cases = [
        (["--run-id", "0" * 32, "--images", str(tmp_path / "small")],
         f"l2d: error: --run-id={'0' * 32}: no such run in {em_run.uri}"),
        (["--run-id", em_run.run_id, "--images", str(tmp_path / "empty")],
         f"l2d: error: --images={tmp_path / 'empty'}: no image files"),
        (["--run-id", em_run.run_id, "--images", str(tmp_path / "small")],
         f"l2d: error: {tmp_path / 'small'}: entry 0 ({str(tmp_path / 'small' / 'a.png')!r}): "
         "image of 7x7x3; the run's system takes 8x8x3 (HxWxC)"),
    ]
    # Runs that ended before logging their model: one with a checkpoint, one without.
    experiment = em_run.client.get_run(em_run.run_id).info.experiment_id
    checkpoints = em_run.client.get_run(em_run.run_id).data.tags["checkpoints"]
    killed = em_run.client.create_run(experiment, tags={"checkpoints": checkpoints}).info.run_id
    em_run.client.set_terminated(killed, "KILLED")
    failed = em_run.client.create_run(experiment).info.run_id
    em_run.client.set_terminated(failed, "FAILED")
    cases += [
        (["--run-id", killed, "--images", str(tmp_path / "small")],
         f"l2d: error: --run-id={killed}: the run is KILLED: it ended before logging its "
         f"deferral_system model; `l2d export --run-id {killed}` logs one from its latest "
         f"checkpoint (after epoch 2), or `l2d train --resume --run-id {killed}` finishes its "
         "training"),
        (["--run-id", failed, "--images", str(tmp_path / "small")],
         f"l2d: error: --run-id={failed}: the run is FAILED and has no deferral_system model, "
         "nor a checkpoint to make one from: there is nothing to serve"),
    ]
    for argv, start in cases:
        code, stderr = in_process_cli(monkeypatch, capsys, "predict", *argv, "--output",
                                      str(tmp_path / "out.json"))
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith(start), stderr
    assert not (tmp_path / "out.json").exists()
    # From Python too, loading a run without a model is one line saying why.
    raises_one_line(lambda: l2d.load_model(killed, em_run.uri), f"--run-id={killed}: the run is "
                    "KILLED: it ended before logging its deferral_system model")
    # `l2d runs --newest` names the newest FINISHED run, the one with a model.
    assert cli.main(["runs", "--newest"]) == 0
    assert capsys.readouterr().out.strip() == em_run.run_id
    assert cli.main(["runs", "--status", "any"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert listed[0].split()[:3] == ["run", "id", "status"] and len(listed) == 4
    assert {line.split()[0]: line.split()[-1] for line in listed[1:]} == {
        em_run.run_id: "yes", killed: "no", failed: "no"}


def test_export_logs_a_model_to_an_existing_run_and_keeps_its_status(em_run, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(em_run.root)
    assert in_process_cli(monkeypatch, capsys, "export", "--run-id", "0" * 32) == (
        2, f"l2d: error: --run-id={'0' * 32}: no such run in {em_run.uri}\n")
    assert in_process_cli(monkeypatch, capsys, "export", "--run-id", em_run.run_id,
                          "--register-model", "a/b") == (
        2, "l2d: error: --register-model='a/b': a registered model's name is not empty and has "
           "no '/' or ':'\n")
    # A run killed earlier stays KILLED, with its end time.
    em_run.client.set_terminated(em_run.run_id, "KILLED", end_time=1_000_000)
    assert cli.main(["export", "--run-id", em_run.run_id, "--register-model", "exported"]) == 0
    model_uri = capsys.readouterr().out.split()[0]  # start_jax is still stubbed, as above.
    assert model_uri.startswith("models:/")
    info = em_run.client.get_run(em_run.run_id).info
    assert (info.status, info.end_time) == ("KILLED", 1_000_000)
    versions = em_run.client.search_model_versions("name = 'exported'")
    assert [version.run_id for version in versions] == [em_run.run_id]
    mlflow.set_tracking_uri(em_run.uri)
    exported = mlflow.pyfunc.load_model(model_uri)
    assert exported.predict(em_run.images)["expert_index"].tolist() == em_run.expected


def post(url: str, images, timeout: float = 60) -> list[int]:
    body = json.dumps({"inputs": np.asarray(images).tolist()}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return [row["expert_index"] for row in json.loads(response.read())["predictions"]]


def refusal(url: str, images) -> str:
    """The message of the HTTP 400 that POSTing ``images`` gets."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        post(url, images)
    assert refused.value.code == 400
    return json.loads(refused.value.read())["message"]


def test_served_model_answers_as_local_predict_under_load(em_run, record_property):
    port = free_port()
    url = f"http://127.0.0.1:{port}/invocations"
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m",
         f"runs:/{em_run.run_id}/deferral_system", "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=em_run.root, env={**cli_env(), "MLFLOW_TRACKING_URI": em_run.uri,
                              # MLflow starts the `uvicorn` of PATH, as in an activated venv.
                              "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        first = None
        while first is None:
            assert time.monotonic() - started < 180, "no answer within 180 s"
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                first = post(url, em_run.images, timeout=30)
            except urllib.error.HTTPError:
                raise  # The server answered: its message says what is wrong.
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        first_answer_s = time.monotonic() - started
        assert first == em_run.expected
        # l2d's line is the whole message (MLflow's server would put the input before it).
        assert refusal(url, np.zeros((2, 7, 7, 3), np.uint8)) == (
            "input: images of 7x7x3; this system was trained on 8x8x3 (HxWxC)")
        # Pixels scaled to [0, 1] are refused, not cast to uint8 (0.87 would become 0).
        scaled = em_run.images[:2] / 255.0
        fraction = scaled[scaled != np.round(scaled)].flat[0]
        assert refusal(url, scaled) == (
            f"input: pixels are uint8 in 0..255; got float values such as {fraction:g}")
        assert post(url, []) == []
        # A served model opens no file a request names.
        assert refusal(url, [em_run.files[0]]) == (
            "input: image file paths are taken from Python only, as a numpy array of dtype "
            "object; over HTTP send pixels")

        rng = np.random.default_rng(0)
        requests = [rng.choice(len(em_run.images), size=rng.integers(1, MAX_BATCH + 1))
                    for _ in range(REQUESTS)]
        # The bounds apply to each request's batch, as to a local predict of the same images.
        expected = [em_run.model.predict(em_run.images[rows])["expert_index"].tolist()
                    for rows in requests]
        load_started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as clients:
            answers = list(clients.map(lambda rows: post(url, em_run.images[rows]), requests))
        seconds = time.monotonic() - load_started
        assert answers == expected
        # Printed at the end of the suite's output (conftest.py), with several workers too.
        record_property(MEASURED, f"mlflow models serve: first answer {first_answer_s:.1f} s "
                        f"after launch; {REQUESTS} requests of 1-{MAX_BATCH} images from "
                        f"{CLIENTS} clients: {REQUESTS / seconds:.1f} requests/s")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
