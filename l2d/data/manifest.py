"""JSON manifests -> validated, file-aligned records of one split.

A manifest is a JSON list ``[{"file": str, "label": int}, ...]``. Each split has one ground-truth
manifest and K >= 1 expert manifests (expert k's label for each file). Expert labels are aligned
with the ground truth BY FILE, never by position, and every expert must cover exactly the
ground-truth files, unless missing annotations are allowed: then an expert manifest may omit
files of the ground truth or give ``"label": null``, and that expert's label is ``MISSING``.

Relative ``file`` paths resolve against the folder that holds the manifest; absolute paths are used
as is. Every problem is raised as a one-line :class:`~l2d.errors.L2DError` naming the manifest, the
entry (index in the JSON list and file) and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2d.annotations import MISSING
from l2d.errors import L2DError

_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True, eq=False)
class SplitRecords:
    """One split: image files with their ground-truth and expert labels (arrays are read-only)."""

    groundtruth_path: str  # the ground-truth manifest this split was read from
    expert_paths: tuple[str, ...]  # expert manifests, in expert order (column k = expert k)
    files: tuple[str, ...]  # absolute image paths, in ground-truth manifest order
    labels: np.ndarray  # int32 [N]: true label of files[i]
    expert_labels: np.ndarray  # int32 [N, K]: expert k's label of files[i] or MISSING
    # int [N]: the ground-truth manifest's entry of each row, when the split is a part of the
    # manifest (a held-out validation split); None: row i is entry i.
    entries: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return len(self.files)

    def entry(self, row: int) -> int:
        """The index in the ground-truth manifest of row ``row``, for error messages."""
        return row if self.entries is None else int(self.entries[row])

    def subset(self, rows: np.ndarray) -> SplitRecords:
        """The split of these rows (sorted), each still named by its manifest entry."""
        rows = np.asarray(rows)
        labels, expert_labels = self.labels[rows], self.expert_labels[rows]
        labels.setflags(write=False)
        expert_labels.setflags(write=False)
        return SplitRecords(groundtruth_path=self.groundtruth_path,
                            expert_paths=self.expert_paths,
                            files=tuple(self.files[row] for row in rows.tolist()),
                            labels=labels, expert_labels=expert_labels,
                            entries=np.asarray([self.entry(row) for row in rows.tolist()]))

    @property
    def num_experts(self) -> int:
        return len(self.expert_paths)

    def digest(self) -> str:
        """A hash of the split's manifests' contents as they are now on disk (ground truth, then
        the experts in order): the same manifests give the same digest wherever they are."""
        content = hashlib.sha256()
        for path in (self.groundtruth_path, *self.expert_paths):
            with open(path, "rb") as manifest:
                content.update(hashlib.sha256(manifest.read()).digest())
        return content.hexdigest()[:16]

    def dataset_name(self) -> str:
        """``<folder>/<ground-truth manifest name>``, e.g. ``cifar10/train_groundtruth``."""
        folder, name = os.path.split(os.path.abspath(self.groundtruth_path))
        return f"{os.path.basename(folder)}/{os.path.splitext(name)[0]}"


def _entry(path: str, index: int, file: object | None = None) -> str:
    """The common message prefix that locates an entry: ``manifest: entry i (file)``."""
    where = f"{path}: entry {index}"
    return where if file is None else f"{where} ({file!r})"


def read_manifest(path: str | os.PathLike, *, allow_null_labels: bool = False
                  ) -> list[tuple[str, int]]:
    """Read and check one manifest; return ``(absolute file, label)`` pairs in manifest order.

    With ``allow_null_labels``, ``"label": null`` reads as ``MISSING``."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise L2DError(f"{path}: manifest file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise L2DError(f"{path}: cannot read manifest: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise L2DError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, list):
        raise L2DError(
            f"{path}: manifest must be a JSON list of {{\"file\": ..., \"label\": ...}} objects, "
            f"got a JSON {type(data).__name__}"
        )
    if not data:
        raise L2DError(f"{path}: manifest has no entries")

    folder = os.path.dirname(os.path.abspath(path))
    records: list[tuple[str, int]] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise L2DError(
                f"{_entry(path, i)}: must be an object with keys 'file' and 'label', "
                f"got a JSON {type(entry).__name__}"
            )
        for key in ("file", "label"):
            if key not in entry:
                raise L2DError(f"{_entry(path, i, entry.get('file'))}: missing key {key!r}")
        file, label = entry["file"], entry["label"]
        if not isinstance(file, str) or not file:
            raise L2DError(f"{_entry(path, i)}: 'file' must be a non-empty string, got {file!r}")
        if label is None and allow_null_labels:
            label = MISSING
        # bool is a subclass of int and 3.0 is a float: neither is a class index.
        elif isinstance(label, bool) or not isinstance(label, int):
            raise L2DError(f"{_entry(path, i, file)}: 'label' must be an integer, got {label!r}")
        elif label < 0:
            raise L2DError(f"{_entry(path, i, file)}: label {label} is negative")
        elif label > _INT32_MAX:
            raise L2DError(f"{_entry(path, i, file)}: label {label} is too large")
        resolved = os.path.normpath(os.path.join(folder, file))  # absolute `file` wins in join
        if resolved in first_index:
            raise L2DError(
                f"{_entry(path, i, file)}: duplicate file, already listed at entry "
                f"{first_index[resolved]} (both resolve to {resolved!r})"
            )
        first_index[resolved] = i
        records.append((resolved, label))
    return records


def _check_images_exist(path: str, records: list[tuple[str, int]]) -> None:
    for i, (file, _) in enumerate(records):
        if not os.path.isfile(file):
            raise L2DError(f"{_entry(path, i, file)}: image file not found")


def load_split(
    groundtruth_path: str | os.PathLike, expert_paths: Sequence[str | os.PathLike], *,
    allow_missing: bool = False,
) -> SplitRecords:
    """Read a ground-truth manifest and K >= 1 expert manifests, aligned by file.

    With ``allow_missing`` an expert manifest may omit ground-truth files or give null labels:
    those annotations are ``MISSING``."""
    groundtruth_path = os.fspath(groundtruth_path)
    if isinstance(expert_paths, (str, os.PathLike)):
        raise TypeError("expert_paths must be a sequence of paths, not a single path")
    expert_paths = tuple(os.fspath(p) for p in expert_paths)
    if not expert_paths:
        raise L2DError(f"{groundtruth_path}: no expert manifests given (need at least one)")

    truth = read_manifest(groundtruth_path)
    _check_images_exist(groundtruth_path, truth)
    row_of = {file: i for i, (file, _) in enumerate(truth)}
    expert_labels = np.full((len(truth), len(expert_paths)), MISSING, dtype=np.int32)
    for k, expert_path in enumerate(expert_paths):
        expert = read_manifest(expert_path, allow_null_labels=allow_missing)
        seen = np.zeros(len(truth), dtype=bool)
        for j, (file, label) in enumerate(expert):
            row = row_of.get(file)
            if row is None:
                raise L2DError(
                    f"{_entry(expert_path, j, file)}: file is not in the ground-truth manifest "
                    f"{groundtruth_path}"
                )
            seen[row] = True
            expert_labels[row, k] = label
        if not (allow_missing or seen.all()):
            row = int(np.argmin(seen))
            raise L2DError(
                f"{expert_path}: has no entry for file {truth[row][0]!r} "
                f"(ground-truth manifest {groundtruth_path}, entry {row}; "
                "--allow-missing-annotations accepts that)"
            )

    labels = np.array([label for _, label in truth], dtype=np.int32)
    labels.setflags(write=False)
    expert_labels.setflags(write=False)
    return SplitRecords(
        groundtruth_path=groundtruth_path,
        expert_paths=expert_paths,
        files=tuple(file for file, _ in truth),
        labels=labels,
        expert_labels=expert_labels,
    )


def infer_num_classes(train: SplitRecords, num_classes: int | None) -> int:
    """C = max(train labels) + 1, or the given ``num_classes`` once checked to be large enough."""
    row = int(np.argmax(train.labels))
    largest = int(train.labels[row])
    if num_classes is None:
        return largest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise L2DError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < largest + 1:
        raise L2DError(
            f"{_entry(train.groundtruth_path, row, train.files[row])}: label {largest} needs "
            f"num_classes >= {largest + 1}, but num_classes={num_classes} was given"
        )
    return int(num_classes)


def check_labels(split: SplitRecords, num_classes: int) -> None:
    """Every ground-truth and expert label of ``split`` must lie in [0, num_classes)."""
    bad = (split.labels < 0) | (split.labels >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        value = int(split.labels[row])
        where = _entry(split.groundtruth_path, split.entry(row), split.files[row])
        raise L2DError(
            f"{where}: label {value} is outside [0, {num_classes}) (num_classes={num_classes})"
        )
    for k, expert_path in enumerate(split.expert_paths):
        column = split.expert_labels[:, k]
        bad = ((column < 0) & (column != MISSING)) | (column >= num_classes)
        if bad.any():
            file = split.files[int(np.argmax(bad))]
            # Only on this error path: re-read the expert manifest to name its own entry index.
            try:
                index = [f for f, _ in read_manifest(expert_path)].index(file)
            except (L2DError, ValueError):
                index = "?"
            value = int(column[int(np.argmax(bad))])
            raise L2DError(
                f"{expert_path}: entry {index} ({file!r}): expert label {value} is outside "
                f"[0, {num_classes}) (num_classes={num_classes})"
            )
