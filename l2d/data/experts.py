"""Synthetic experts: an expert's label for every file of a ground-truth manifest, as a manifest.

Two kinds (C classes; a wrong answer is always drawn uniformly from the C - 1 OTHER classes):

- ``noise`` with probability p: wrong with probability p, so its accuracy is 1 - p in expectation;
- ``specialist`` on a set of classes: right with probability p_in on those classes and p_out on
  the others. p_in = 1, p_out = 1/C is the literature's specialist (always right on its classes,
  uniformly random elsewhere, since a wrong answer is uniform over the other classes).

Randomness is per file, not per position: a sample's two uniform draws come from a BLAKE2b hash of
(seed, the expert's name, the file's path relative to its manifest's folder). So an expert's answer
to an image does not depend on the order of the manifest, and one expert definition and seed
behaves the same on the train and the test manifests (a file listed under the same relative name
in two manifests gets the same answer).

``write_experts`` writes ``<prefix>_<name>_<seed>.json`` beside each ground-truth manifest, e.g.
``train_random_noise_0.3_44.json`` or ``train_specialist_0-4_1.0_0.1_44.json``. With a missing
rate R it leaves out the annotations of round(R N) files of each manifest, chosen by a third
hash of the same kind (``..._missing_0.3_44.json``), for training with missing annotations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2d.data.manifest import read_manifest
from l2d.errors import L2DError

KINDS = ("noise", "specialist")
_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_UNIT = 2.0 ** -53  # uint64 >> 11 (53 bits) times this is a uniform double in [0, 1)


def parse_classes(text: str) -> tuple[int, ...]:
    """"0-4" -> (0, 1, 2, 3, 4); "0,2,7" -> (0, 2, 7); parts may mix ("0-2,5") and may also be
    separated by "+" (as in expert file names). Returns sorted, distinct classes (>= 0)."""
    text = str(text)
    if not text.strip():
        raise L2DError(f"class set is empty: {text!r} (expected e.g. '0-4' or '0,2,7')")
    classes: set[int] = set()
    for part in re.split(r"[,+]", text):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise L2DError(f"cannot parse class set {text!r}: bad part {part!r} "
                           "(expected e.g. '0-4' or '0,2,7')")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise L2DError(f"class set {text!r}: range {part.strip()!r} is empty "
                           f"({last} < {first})")
        classes.update(range(first, last + 1))
    return tuple(sorted(classes))


def format_classes(classes: tuple[int, ...]) -> str:
    """Runs of consecutive classes as "a-b", joined by "+": (0, 1, 2, 5, 7, 8) -> "0-2+5+7-8".

    No commas, since the CLI separates file lists by commas; ``parse_classes`` reads it back."""
    runs, start = [], None
    for i, c in enumerate(classes):
        if start is None:
            start = c
        if i + 1 == len(classes) or classes[i + 1] != c + 1:
            runs.append(str(c) if c == start else f"{start}-{c}")
            start = None
    return "+".join(runs)


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(value) <= 1.0:  # NaN fails the comparison too
        raise L2DError(f"expert {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExpertSpec:
    """One synthetic expert. Use ``ExpertSpec.noise(p)`` or ``ExpertSpec.specialist(classes,
    p_in, p_out)``; the constructor checks the values (L2DError) and sorts ``classes``."""

    kind: str  # "noise" | "specialist"
    p: float | None = None  # noise: probability of a wrong answer
    classes: tuple[int, ...] | None = None  # specialist: its classes (sorted, distinct)
    p_in: float | None = None  # specialist: probability of a right answer on its classes
    p_out: float | None = None  # specialist: probability of a right answer elsewhere

    @classmethod
    def noise(cls, p: float) -> ExpertSpec:
        return cls("noise", p=p)

    @classmethod
    def specialist(cls, classes, p_in: float, p_out: float) -> ExpertSpec:
        if isinstance(classes, str):
            classes = parse_classes(classes)
        return cls("specialist", classes=classes, p_in=p_in, p_out=p_out)

    def __post_init__(self):
        if self.kind == "noise":
            if self.classes is not None or self.p_in is not None or self.p_out is not None:
                raise L2DError("a noise expert takes only p (no classes, p_in, p_out)")
            object.__setattr__(self, "p", _probability("noise p", self.p))
        elif self.kind == "specialist":
            if self.p is not None:
                raise L2DError("a specialist expert takes classes, p_in and p_out (not p)")
            try:
                classes = tuple(sorted({int(c) for c in self.classes or ()}))
            except (TypeError, ValueError):
                raise L2DError(f"specialist classes must be integers, got {self.classes!r}") \
                    from None
            if not classes:
                raise L2DError("a specialist expert needs a non-empty class set")
            if classes[0] < 0:
                raise L2DError(f"specialist class {classes[0]} is negative")
            object.__setattr__(self, "classes", classes)
            object.__setattr__(self, "p_in", _probability("specialist p_in", self.p_in))
            object.__setattr__(self, "p_out", _probability("specialist p_out", self.p_out))
        else:
            raise L2DError(f"expert kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def name(self) -> str:
        """File-name part: ``random_noise_0.3`` or ``specialist_0-4_1.0_0.1``."""
        if self.kind == "noise":
            return f"random_noise_{self.p!r}"
        return f"specialist_{format_classes(self.classes)}_{self.p_in!r}_{self.p_out!r}"

    def check(self, num_classes: int) -> None:
        """L2DError if the expert cannot exist with ``num_classes`` classes."""
        if self.kind == "specialist" and self.classes[-1] >= num_classes:
            raise L2DError(f"specialist class {self.classes[-1]} is outside [0, {num_classes}) "
                           f"(num_classes={num_classes})")
        can_be_wrong = self.p > 0 if self.kind == "noise" else min(self.p_in, self.p_out) < 1
        if can_be_wrong and num_classes < 2:
            raise L2DError(f"expert {self.name} needs at least 2 classes to answer wrongly, "
                           f"num_classes={num_classes}")

    def labels(self, labels: np.ndarray, num_classes: int, uniforms: np.ndarray) -> np.ndarray:
        """This expert's answers to true ``labels`` [N] given ``uniforms`` [N, 2]."""
        if self.kind == "noise":
            return label_noise(labels, self.p, num_classes, uniforms)
        return class_specialist(labels, self.classes, self.p_in, self.p_out, num_classes,
                                uniforms)


def _other_class(labels: np.ndarray, num_classes: int, u: np.ndarray) -> np.ndarray:
    """A class drawn uniformly from the num_classes - 1 classes other than ``labels``."""
    shift = np.minimum(np.floor(u * (num_classes - 1)).astype(np.int64), num_classes - 2)
    return (labels + 1 + shift) % num_classes


def _answer(labels, p_right, num_classes, uniforms) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    uniforms = np.asarray(uniforms, dtype=np.float64)
    if uniforms.shape != (labels.shape[0], 2):
        raise ValueError(f"uniforms must have shape [N, 2] = {(labels.shape[0], 2)}, "
                         f"got {uniforms.shape}")
    right = uniforms[:, 0] < p_right
    if right.all():
        return labels.copy()
    return np.where(right, labels, _other_class(labels, num_classes, uniforms[:, 1]))


def label_noise(labels: np.ndarray, p: float, num_classes: int,
                uniforms: np.ndarray) -> np.ndarray:
    """int64 [N]: ``labels`` [N], each replaced with probability ``p`` by a uniformly drawn
    OTHER class. ``uniforms`` [N, 2] in [0, 1): column 0 decides, column 1 picks the class."""
    return _answer(labels, 1.0 - p, num_classes, uniforms)


def class_specialist(labels: np.ndarray, classes, p_in: float, p_out: float, num_classes: int,
                     uniforms: np.ndarray) -> np.ndarray:
    """int64 [N]: right with probability ``p_in`` where the true label is in ``classes``,
    ``p_out`` elsewhere; a wrong answer is a uniformly drawn other class. ``uniforms`` as in
    ``label_noise``."""
    inside = np.isin(np.asarray(labels), np.asarray(tuple(classes), dtype=np.int64))
    return _answer(labels, np.where(inside, p_in, p_out), num_classes, uniforms)


def sample_uniforms(keys: list[str], seed: int, spec: ExpertSpec,
                    stream: str = "") -> np.ndarray:
    """float64 [N, 2] in [0, 1): two uniforms per key from BLAKE2b(seed, spec.name, key), or
    from another ``stream`` of them (e.g. which annotations go missing)."""
    prefix = f"l2d-expert\0{int(seed)}\0{spec.name}\0{stream + chr(0) if stream else ''}".encode()
    digests = b"".join(
        hashlib.blake2b(prefix + key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        for key in keys
    )
    words = np.frombuffer(digests, dtype="<u8").reshape(len(keys), 2)
    return (words >> np.uint64(11)).astype(np.float64) * _UNIT


def _output_name(groundtruth: Path, spec: ExpertSpec, seed: int, missing_rate: float) -> Path:
    name = groundtruth.name
    for suffix in ("_groundtruth.json", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    missing = f"_missing_{missing_rate!r}" if missing_rate else ""
    return groundtruth.with_name(f"{name}_{spec.name}{missing}_{seed}.json")


def annotated(keys: list[str], seed: int, spec: ExpertSpec, missing_rate: float) -> np.ndarray:
    """bool [N]: the files that keep their annotation, all but round(missing_rate N) of them."""
    drop = np.argsort(sample_uniforms(keys, seed, spec, stream="missing")[:, 0], kind="stable")
    kept = np.ones(len(keys), bool)
    kept[drop[:round(missing_rate * len(keys))]] = False
    return kept


def write_experts(groundtruth_paths: list[str], spec: ExpertSpec, *, seed: int,
                  num_classes: int | None = None, missing_rate: float = 0.0) -> list[dict]:
    """Write one expert manifest beside each ground-truth manifest (same files, same order).

    C = max label + 1 over all the given ground truths unless ``num_classes`` is given. Returns
    per manifest ``{"path": str, "num_samples": int, "accuracy": float}``, plus for a specialist
    ``"accuracy_in"`` / ``"accuracy_out"`` (on samples whose true class is / is not one of its
    classes; None where there is no such sample), measured on the written labels, and
    ``"num_missing"``, the files left without an annotation (``missing_rate`` in [0, 1)).
    """
    if not isinstance(spec, ExpertSpec):
        raise TypeError(f"spec must be an ExpertSpec, got {type(spec).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise L2DError(f"expert seed must be a non-negative integer, got {seed!r}")
    if isinstance(groundtruth_paths, (str, os.PathLike)):
        groundtruth_paths = [groundtruth_paths]
    if not groundtruth_paths:
        raise L2DError("no ground-truth manifest given")
    if not 0 <= missing_rate < 1:
        raise L2DError(f"--missing-rate={missing_rate}: must be in [0, 1)")

    manifests = []  # (path, raw file strings, keys, labels)
    for path in groundtruth_paths:
        path = Path(os.path.abspath(path))
        records = read_manifest(path)  # validates; files resolved against the manifest folder
        with open(path, encoding="utf-8") as f:
            raw_files = [entry["file"] for entry in json.load(f)]
        folder = str(path.parent)
        keys = [Path(os.path.relpath(file, folder)).as_posix() for file, _ in records]
        labels = np.array([label for _, label in records], dtype=np.int64)
        manifests.append((path, raw_files, keys, labels))

    largest = max(int(labels.max()) for *_, labels in manifests)
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise L2DError(f"num_classes must be an integer, got {num_classes!r}")
    elif num_classes <= largest:
        path, _, keys, labels = next(m for m in manifests if int(m[3].max()) == largest)
        row = int(np.argmax(labels))
        raise L2DError(f"{path}: entry {row} ({keys[row]!r}): label {largest} is outside "
                       f"[0, {num_classes}) (num_classes={num_classes})")
    spec.check(num_classes)

    outputs = [_output_name(path, spec, seed, missing_rate) for path, *_ in manifests]
    if len(set(outputs)) != len(outputs):
        raise L2DError(f"two ground-truth manifests would write the same expert file: {outputs}")
    results = []
    for (_, raw_files, keys, labels), out in zip(manifests, outputs):
        answers = spec.labels(labels, num_classes, sample_uniforms(keys, seed, spec))
        kept = annotated(keys, seed, spec, missing_rate)
        text = "[\n" + ",\n".join(
            json.dumps({"file": file, "label": int(label)})
            for file, label, keep in zip(raw_files, answers.tolist(), kept) if keep
        ) + "\n]\n"
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, out)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            raise L2DError(f"{out}: cannot write expert manifest: {e}") from None
        right, labels = (answers == labels)[kept], labels[kept]
        result = {"path": str(out), "num_samples": len(labels),
                  "num_missing": int((~kept).sum()),
                  "accuracy": float(right.mean()) if right.size else float("nan")}
        if spec.kind == "specialist":
            inside = np.isin(labels, spec.classes)
            result["accuracy_in"] = float(right[inside].mean()) if inside.any() else None
            result["accuracy_out"] = float(right[~inside].mean()) if (~inside).any() else None
        results.append(result)
    return results
