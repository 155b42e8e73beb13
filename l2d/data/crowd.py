"""A simulated crowd: N annotators, each labelling its own seeded M images of every split.

Annotator i's accuracy a_i is drawn uniformly from [LO, HI]; it is right on an image with
probability a_i and otherwise gives a class drawn uniformly from the C - 1 other classes (the
``noise`` expert of ``l2d.data.experts`` with p = 1 - a_i). As there, every draw comes from a
hash of (seed, the annotator, the file's path relative to its manifest), so which images an
annotator labels, and its answer to each, depend on neither the order of a manifest nor the
other splits.

``write_crowd`` writes ``<prefix>_crowd<N>_<seed>_a<i>.json`` beside each ground-truth manifest
(``train_crowd100_0_a07.json``), listing only the M files that annotator labelled: train with
``--allow-missing-annotations``, and name them all by a glob such as
``data/train_crowd100_0_a*.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from l2d.data.experts import ExpertSpec, sample_uniforms
from l2d.data.manifest import read_manifest
from l2d.errors import L2DError

# ``sample_uniforms`` hashes an expert's name; every draw of the crowd has its own stream of it.
_HASHED = ExpertSpec.noise(0.0)


def annotator_accuracies(num_annotators: int, accuracy: tuple[float, float],
                         seed: int) -> np.ndarray:
    """float64 [N]: each annotator's accuracy, uniform in [LO, HI]."""
    low, high = accuracy
    keys = [f"annotator {i}" for i in range(num_annotators)]
    draws = sample_uniforms(keys, seed, _HASHED, stream="crowd accuracy")[:, 0]
    return low + (high - low) * draws


def check_crowd(num_annotators: int, per_annotator: int, accuracy: tuple[float, ...]) -> None:
    """L2DError naming the flag whose value cannot make a crowd."""
    if num_annotators < 1:
        raise L2DError(f"--crowd={num_annotators}: needs at least one annotator")
    if per_annotator < 1:
        raise L2DError(f"--per-annotator={per_annotator}: must be at least 1")
    if len(accuracy) != 2 or not 0 <= accuracy[0] <= accuracy[1] <= 1:
        raise L2DError(f"--accuracy={','.join(map(str, accuracy))}: expected LO,HI with "
                       "0 <= LO <= HI <= 1")


def crowd_files(groundtruth: Path, num_annotators: int, seed: int) -> tuple[list[Path], str]:
    """The annotators' manifests beside ``groundtruth``, and the glob that names them all."""
    prefix = groundtruth.name.removesuffix(".json").removesuffix("_groundtruth")
    stem = groundtruth.with_name(f"{prefix}_crowd{num_annotators}_{seed}_a")
    digits = len(str(num_annotators - 1))
    return ([Path(f"{stem}{i:0{digits}d}.json") for i in range(num_annotators)],
            f"{stem}*.json")


def write_crowd(groundtruth_paths: list[str], *, num_annotators: int, per_annotator: int,
                accuracy: tuple[float, float], seed: int,
                num_classes: int | None = None) -> list[dict]:
    """Write the crowd's manifests beside each ground-truth manifest; per manifest, return
    ``{"groundtruth", "num_samples", "annotators", "per_annotator", "accuracy": [N measured],
    "covered", "files"}`` (``covered``: the images at least one annotator labelled; ``files``:
    the glob of the crowd's manifests)."""
    check_crowd(num_annotators, per_annotator, accuracy)
    accuracies = annotator_accuracies(num_annotators, accuracy, seed)
    manifests = []
    for path in groundtruth_paths:
        path = Path(os.path.abspath(path))
        records = read_manifest(path)
        if per_annotator > len(records):
            raise L2DError(f"--per-annotator={per_annotator}: {path} has only {len(records)} "
                           "images")
        raw_files = [entry["file"] for entry in json.loads(path.read_text(encoding="utf-8"))]
        keys = [Path(os.path.relpath(file, path.parent)).as_posix() for file, _ in records]
        manifests.append((path, raw_files, keys,
                          np.array([label for _, label in records], np.int64)))
    largest = max(int(labels.max()) for *_, labels in manifests)
    num_classes = largest + 1 if num_classes is None else num_classes
    if num_classes <= largest:
        raise L2DError(f"--num-classes={num_classes}: the ground truth has label {largest}")
    if num_classes < 2:
        raise L2DError("a crowd needs at least 2 classes to answer wrongly")
    results = []
    for path, raw_files, keys, labels in manifests:
        measured, covered = [], np.zeros(len(keys), bool)
        outputs, pattern = crowd_files(path, num_annotators, seed)
        for i, (p_right, out) in enumerate(zip(accuracies, outputs)):
            picks = sample_uniforms(keys, seed, _HASHED, stream=f"crowd pick {i}")[:, 0]
            chosen = np.sort(np.argsort(picks, kind="stable")[:per_annotator])
            answers = ExpertSpec.noise(1.0 - float(p_right)).labels(
                labels[chosen], num_classes, sample_uniforms(
                    [keys[j] for j in chosen], seed, _HASHED, stream=f"crowd answer {i}"))
            covered[chosen] = True
            measured.append(float(np.mean(answers == labels[chosen])))
            text = json.dumps([{"file": raw_files[j], "label": int(label)}
                               for j, label in zip(chosen.tolist(), answers.tolist())])
            try:
                out.write_text(text + "\n", encoding="utf-8")
            except OSError as error:
                raise L2DError(f"{out}: cannot write expert manifest: {error}") from None
        results.append({"groundtruth": str(path), "num_samples": len(keys),
                        "annotators": num_annotators, "per_annotator": per_annotator,
                        "accuracy": measured, "covered": int(covered.sum()), "files": pattern})
    return results
