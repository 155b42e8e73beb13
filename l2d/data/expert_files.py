"""``--train-files``, ``--test-files`` and ``--val-files`` given as a folder or a glob: the expert
manifests they name, in sorted order, with the test and validation experts matched to the
training experts by name.

A folder stands for its ``<split>_*.json`` files (the layout ``l2d prepare annotations`` and
``l2d experts`` write), a glob for the files it matches; either way the split's ground-truth
manifest (``<split>_groundtruth.json``, or the one the run names) is no expert. An expert's
name is its file's stem without the ``<split>_`` prefix, so ``train_ann7.json`` and
``test_ann7.json`` are the same expert. The expanded lists are what the run records, so a
resumed run reads exactly the files it started with.
"""

import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l2d.errors import L2DError
from l2d.options import flag_of

# The file lists a folder or a glob may stand for, and the split each one holds.
SPLITS = {"train_files": "train", "test_files": "test", "val_files": "val"}
GROUNDTRUTH = {"train_files": "train_groundtruth_file", "test_files": "test_groundtruth_file",
               "val_files": "val_groundtruth_file"}
GLOB_CHARACTERS = "*?["


def names_many(files: tuple[str, ...]) -> bool:
    """Whether a file list is one folder or one glob, not a list of manifests."""
    return len(files) == 1 and (os.path.isdir(files[0])
                                or any(c in files[0] for c in GLOB_CHARACTERS))


def expanded(pattern: str, split: str, groundtruth: str | None) -> tuple[str, ...]:
    """The expert manifests a folder or a glob names, sorted; L2DError if there is none."""
    if os.path.isdir(pattern):
        files = glob.glob(os.path.join(glob.escape(pattern), f"{split}_*.json"))
    else:
        files = glob.glob(pattern)
    skipped = {f"{split}_groundtruth"}
    truth = Path(groundtruth).resolve() if groundtruth else None
    experts = sorted(file for file in files if Path(file).stem not in skipped
                     and Path(file).resolve() != truth and os.path.isfile(file))
    if not experts:
        what = f"{split}_*.json" if os.path.isdir(pattern) else "files"
        raise L2DError(f"{pattern}: no expert manifests ({what}, besides the ground truth)")
    return tuple(experts)


def expert_name(file: str, split: str) -> str:
    """``train_ann7.json`` -> ``ann7``: the name that matches an expert across splits."""
    stem = Path(file).stem
    return stem[len(split) + 1:] if stem.startswith(f"{split}_") else stem


def matched(files: tuple[str, ...], train_files: tuple[str, ...], name: str
            ) -> tuple[str, ...]:
    """``files`` (of the split of ``name``, a ``SPLITS`` key) in the order of the training
    experts they match by name; L2DError naming an expert that one side lacks."""
    split = SPLITS[name]
    by_name = {expert_name(file, split): file for file in files}
    wanted = [expert_name(file, "train") for file in train_files]
    missing = [expert for expert in wanted if expert not in by_name]
    extra = sorted(set(by_name) - set(wanted))
    if missing or extra:
        problem = (f"has no manifest of training expert {missing[0]!r}" if missing
                   else f"names expert {extra[0]!r}, which --train-files lacks")
        count = len(missing) + len(extra)
        raise L2DError(f"{flag_of(name)}: {problem}"
                       + (f" ({count} experts differ)" if count > 1 else ""))
    return tuple(by_name[expert] for expert in wanted)


def with_expert_files(given: dict[str, Any], recorded: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """``given`` (the flags typed) with each file list that is a folder or a glob expanded;
    test and validation experts so expanded are put in the training experts' order (those of
    ``given``, else of ``recorded``, the run's stored values on ``--test`` and ``--resume``)."""
    recorded = recorded or {}
    values = dict(given)
    for name, split in SPLITS.items():
        files = values.get(name)
        if files is None or not names_many(tuple(files)):
            continue
        truth = values.get(GROUNDTRUTH[name], recorded.get(GROUNDTRUTH[name]))
        values[name] = expanded(files[0], split, truth)
        train_files = values.get("train_files", recorded.get("train_files"))
        if name != "train_files" and train_files:
            values[name] = matched(values[name], tuple(train_files), name)
    return values
