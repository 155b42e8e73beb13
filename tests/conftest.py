"""Shared test helpers: ``make_dataset`` writes a tiny image dataset and its manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image


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
