"""Shared test helpers: a tiny image dataset with manifests, JSON files, the CLI's environment."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2d.errors import L2DError

REPO = Path(__file__).resolve().parents[1]
# A proxy in the environment would carry requests to loopback servers away from this machine.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


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
