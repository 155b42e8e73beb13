"""Shared test helpers: a tiny image dataset with manifests, JSON files, the CLI's environment,
training runs of the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2d.errors import L2DError

REPO = Path(__file__).resolve().parents[1]
# Tests that read MLflow stores in-process would print a progress bar per download.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A proxy in the environment would carry requests to loopback servers away from this machine.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


# The user property of a test that measured something worth printing (``pytest_terminal_summary``).
MEASURED = "measured"


def pytest_terminal_summary(terminalreporter) -> None:
    """Print what tests measured at the end of the output: pytest-xdist workers' own output is
    not shown, but their reports' user properties come back."""
    lines = [value for report in terminalreporter.stats.get("passed", [])
             for name, value in report.user_properties if name == MEASURED]
    if lines:
        terminalreporter.write_sep("-", "measured")
        for line in lines:
            terminalreporter.write_line(line)


def cli_env() -> dict[str, str]:
    """Environment for ``python -m l2d`` subprocesses: this checkout, the CPU, no proxy."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def free_port() -> int:
    """A local TCP port that nobody listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raises_one_line(fn, *fragments) -> str:
    """``fn()`` raises L2DError with a one-line message that contains every fragment."""
    with pytest.raises(L2DError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dump(path, data):
    with open(path, "w", encoding="utf-8") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


def make_dataset(
    root,
    *,
    num_train: int,
    num_test: int,
    num_classes: int,
    num_experts: int,
    image_size: int = 8,
    channels: int = 3,
    seed: int = 0,
) -> dict:
    """Write PNG images and manifests under ``root``; return the manifest paths.

    Images lie in ``root/images`` and manifests name them by paths relative to ``root``. Every
    class appears in a split with at least ``num_classes`` samples; an image is its class's colour
    plus noise, so a model can learn from it. Expert k is always right on the classes c with
    ``c % num_experts == k`` and uniformly random on the others (class specialists).

    Returns ``{"train_groundtruth": str, "train_experts": [str] * K, "test_groundtruth": str,
    "test_experts": [str] * K}``.
    """
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes, channels))
    paths: dict = {}
    for split, n in (("train", num_train), ("test", num_test)):
        labels = rng.permutation(np.arange(n) % num_classes)
        truth = []
        for i, label in enumerate(labels.tolist()):
            noise = rng.integers(-40, 41, size=(image_size, image_size, channels))
            pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
            file = f"images/{split}_{i:04d}.png"
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(
                os.path.join(root, file)
            )
            truth.append({"file": file, "label": label})
        paths[f"{split}_groundtruth"] = _write_json(root, f"{split}_groundtruth.json", truth)
        experts = []
        for k in range(num_experts):
            guesses = rng.integers(0, num_classes, size=n)
            entries = [
                {"file": e["file"], "label": e["label"] if e["label"] % num_experts == k else g}
                for e, g in zip(truth, guesses.tolist())
            ]
            experts.append(_write_json(root, f"{split}_expert_{k}.json", entries))
        paths[f"{split}_experts"] = experts
    return paths


def _write_json(root: str, name: str, data) -> str:
    path = os.path.join(root, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


@pytest.fixture
def tiny_dataset(tmp_path) -> dict:
    """20 train and 10 test RGB 8x8 images, 3 classes, 2 experts; see ``make_dataset``."""
    return make_dataset(tmp_path, num_train=20, num_test=10, num_classes=3, num_experts=2)


TINY_MODELS = ["--clf-width", "4", "--dfr-width", "2", "--no-tqdm"]
# The surrogate methods' one network, as small.
TINY_NETWORK = ["--model", "cnn", "--width", "4", "--no-tqdm"]


def train_argv(data: dict, *extra: str, models: list[str] = TINY_MODELS) -> list[str]:
    return [
        sys.executable, "-m", "l2d", "train",
        "--train-files", ",".join(data["train_experts"]),
        "--train-groundtruth-file", data["train_groundtruth"],
        "--test-files", ",".join(data["test_experts"]),
        "--test-groundtruth-file", data["test_groundtruth"],
        *models, *extra,
    ]


def run_cli(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env={**cli_env(), **env}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def in_process_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """(exit code, stderr) of ``l2d ARGV`` run in this process, from the current folder; JAX's
    set-up is left as the tests have it."""
    from l2d import cli, jax_runtime

    monkeypatch.setattr(jax_runtime, "start_jax", lambda runtime: None)
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def only_run(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def routed_by_test(client, run_id: str, tmp_path: Path) -> list[int]:
    """The option ``l2d train --test`` chose per test entry (its JSON artifact's ``routed_to``;
    K is the classifier), from the run's latest ``--test``."""
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "test"))
    path = client.download_artifacts(run_id, artifacts[-1], str(tmp_path))
    return load(path)["routed_to"]


def expert_indices(routed: list[int], num_experts: int) -> list[int]:
    """``routed`` as the model's ``expert_index`` column: -1 where the classifier keeps it."""
    return [-1 if k == num_experts else k for k in routed]


def load_deferral_system(tracking_uri: str, run_id: str):
    """``mlflow.pyfunc.load_model("runs:/ID/deferral_system")`` from the store ``tracking_uri``."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(f"runs:/{run_id}/deferral_system")
    finally:
        mlflow.set_tracking_uri(previous)


def assert_served_as_tested(client, run_id: str, data: dict, tmp_path: Path) -> None:
    """The MLflow model logged by the run routes the test images of ``data`` as the run's latest
    ``--test`` did."""
    _, images = decoded_test_split(data)
    model = load_deferral_system(client.tracking_uri, run_id)
    assert model.predict(images)["expert_index"].tolist() == expert_indices(
        routed_by_test(client, run_id, tmp_path), num_experts=len(data["test_experts"]))


def decoded_test_split(data: dict) -> tuple[list[str], np.ndarray]:
    """The test split's files, in manifest order, and their pixels decoded as training does."""
    from l2d.data.manifest import read_manifest
    from l2d.serving.trained_system import read_image_files

    files = [file for file, _ in read_manifest(data["test_groundtruth"])]
    return files, read_image_files(files, data["test_groundtruth"])
