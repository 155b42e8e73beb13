"""The built-in demo dataset: scikit-learn's bundled handwritten digits as PNG files + manifests.

1,797 grayscale 8x8 digits (10 classes) ship inside scikit-learn, so the demo needs no network.
Two synthetic class-specialist experts make deferral worthwhile: expert 0 is always right on
digits 0-4, expert 1 on digits 5-9, and each answers uniformly at random (any of the 10 classes,
the true one included, so right 10% of the time) elsewhere.
"""

import json
from pathlib import Path

import numpy as np

from l2d.config import TrainConfig
from l2d.data.experts import ExpertSpec, write_experts
from l2d.errors import L2DError

TEST_SHARE = 0.2
SPECIALTIES = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
# Written last: its presence means the folder holds a complete dataset.
COMPLETE_MARKER = "manifests.json"


def demo_manifests(folder: Path, *, seed: int) -> dict[str, list[str] | str] | None:
    """The manifest paths of a complete demo dataset in ``folder``, or None if there is none.

    L2DError if the dataset there was built with another seed (it would not be the one asked for).
    """
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return None
    manifests = json.loads(marker.read_text())
    if manifests.get("seed") != seed:
        raise L2DError(f"{folder}: demo dataset built with seed {manifests.get('seed')}, "
                       f"not {seed}; "
                       "choose another --data-dir")
    return manifests


def write_manifest(path: Path, files: list[str], labels: np.ndarray) -> str:
    path.write_text(json.dumps(
        [{"file": f, "label": int(label)} for f, label in zip(files, labels)], indent=0))
    return str(path)


def build_demo_dataset(folder: Path, *, seed: int = 0) -> dict[str, list[str] | str]:
    """Write images, ground truth and expert manifests for a seeded stratified split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; spread them over 0..255.
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), bool)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[: round(TEST_SHARE * len(members))]] = True

    folder.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, list[str] | str] = {"seed": seed}
    for split, in_split in (("train", ~is_test), ("test", is_test)):
        (folder / split).mkdir(exist_ok=True)
        indices = np.flatnonzero(in_split)
        files = [f"{split}/{i:04d}.png" for i in indices]
        for index, name in zip(indices, files):
            Image.fromarray(images[index]).save(folder / name)
        split_labels = labels[indices]
        manifests[f"{split}_groundtruth"] = write_manifest(
            folder / f"{split}_groundtruth.json", files, split_labels)
    for split in ("train", "test"):
        manifests[f"{split}_experts"] = []
    for specialty in SPECIALTIES:
        spec = ExpertSpec.specialist(specialty, p_in=1.0, p_out=1 / num_classes)
        written = write_experts([manifests["train_groundtruth"], manifests["test_groundtruth"]],
                                spec, seed=seed, num_classes=num_classes)
        for split, result in zip(("train", "test"), written):
            manifests[f"{split}_experts"].append(result["path"])
    (folder / COMPLETE_MARKER).write_text(json.dumps(manifests, indent=2))
    return manifests


def demo_config(manifests: dict, *, num_epochs: int, seed: int) -> TrainConfig:
    """The demo's run: small networks and EM in which the classifier learns from every input
    (weighting it by its posterior starves it into a collapse to coverage 0) and each expert
    takes at most 40% of the inputs, so that the classifier keeps the share it is good at."""
    return TrainConfig.from_dict({
        "experiment_name": "l2d-demo", "run_description": "digits demo, two specialist experts",
        "train_files": manifests["train_experts"],
        "train_groundtruth_file": manifests["train_groundtruth"],
        "test_files": manifests["test_experts"],
        "test_groundtruth_file": manifests["test_groundtruth"],
        "expert_names": ("digits_0-4", "digits_5-9"),
        "clf_width": 8, "dfr_width": 8, "batch_size": 64, "lr": 0.05, "num_epochs": num_epochs,
        "seed": seed, "clf_weighting": "uniform", "max_share": (0.4, 0.4, 1.0),
    }).validate()
