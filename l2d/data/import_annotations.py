"""``l2d prepare annotations``: an annotation table (or a vote-count matrix) -> the manifests
``l2d train`` reads, one per expert and split.

The steps, each with its own flags:

1. **Annotations**: one (item, annotator, label) per row of the table
   (``l2d.data.annotation_table``) that passes every ``--where`` (``COLUMN=VALUE`` or
   ``COLUMN!=VALUE``), or, in a wide table, one per ``--label-columns`` column (the annotator
   is the column's name). A row without a label is no annotation (counted in the summary). The
   item is an image path, or made one by ``--file-pattern`` from the item (``{id}``) and the
   row's other columns (``{noise_level:03d}``), under ``--images-root`` (default: the table's
   folder). Or, from ``--counts``, an N x C matrix of votes whose rows follow the manifest
   ``--order``.
2. **Classes**: ``--classes`` (a JSON list of names), else ``classes.json`` beside a
   ground-truth manifest, else the labels themselves: all integers are indices, otherwise the
   sorted names (numerically if every name is an integer).
3. **Ground truth**: a column (``--groundtruth-column``), existing manifests (``--groundtruth
   TRAIN.json[,TEST.json]``), or ``--groundtruth majority``: each image's most frequent label,
   the smallest class index among a tie.
4. **Split**: a column (``--split-column``) whose values ``--split-values`` names (default
   ``train,test``), the two ground-truth manifests, or ``--test-fraction`` (stratified by
   class, seeded by ``--seed``).
5. **Experts**: every annotator with at least ``--min-annotations`` labels, the
   ``--top-annotators`` most prolific (ties by name), or ``--sample-annotators S`` pooled
   experts: expert s gives each image the s-th of its labels in an order drawn for that image
   from ``--seed`` and its path, so without replacement, and null once they run out.

Written into ``--output``: ``train_<expert>.json`` and ``test_<expert>.json`` (every image of
the split, ``"label": null`` where that expert gave none), ``train_groundtruth.json``,
``test_groundtruth.json``, ``classes.json`` and ``summary.json``, all under temporary names
renamed at the end, so a failed import writes nothing.
"""

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2d.data.annotation_table import Columns, Row, read_table
from l2d.data.manifest import read_manifest
from l2d.data.prepare import CLASSES_FILE, sort_class_names, stratified_split, write_all
from l2d.errors import L2DError

MAJORITY = "majority"
MAJORITY_RULE = "majority vote; a tie goes to the smallest class index"
SPLITS = ("train", "test")
SUMMARY_FILE = "summary.json"
# Characters an expert's name keeps in its manifest's file name.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A label that is a class index: digits, possibly written as a float (3.0).
_INDEX = re.compile(r"([0-9]+)(?:\.0*)?")


@dataclass(frozen=True)
class ImportOptions:
    """What ``l2d prepare annotations`` was asked (its flags, one field each)."""

    output: Path
    table: Path | None = None
    item_column: str = "file"
    annotator_column: str = "annotator"
    label_column: str = "label"
    label_columns: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()
    file_pattern: str | None = None
    images_root: Path | None = None
    counts: Path | None = None
    order: Path | None = None
    classes: Path | None = None
    groundtruth_column: str | None = None
    groundtruth: str | None = None
    split_column: str | None = None
    split_values: tuple[str, ...] = SPLITS
    test_fraction: float | None = None
    min_annotations: int | None = None  # None: 1.
    top_annotators: int | None = None
    sample_annotators: int | None = None
    seed: int = 0


@dataclass
class Annotation:
    where: str  # "TABLE: row N", for errors.
    file: str  # Absolute, normalised.
    annotator: str
    label: str  # As the table gives it: an index or a class name.


def check_options(options: ImportOptions) -> None:
    """L2DError for flags that cannot work together (each is one way of doing a step)."""
    if (options.table is None) == (options.counts is None):
        raise L2DError("give one source: an annotation TABLE or --counts FILE.npy")
    if options.counts is not None:
        if options.order is None:
            raise L2DError("--counts: needs --order MANIFEST.json, the images of its rows")
        if options.sample_annotators is None:
            raise L2DError("--counts: vote counts name no annotator; use --sample-annotators S")
        for flag, given in (("--where", options.where), ("--label-columns", options.label_columns),
                            ("--file-pattern", options.file_pattern),
                            ("--groundtruth-column", options.groundtruth_column),
                            ("--split-column", options.split_column)):
            if given:
                raise L2DError(f"{flag}: reads a table's columns, not with --counts")
    chosen = [flag for flag, given in (("--min-annotations", options.min_annotations),
                                       ("--top-annotators", options.top_annotators),
                                       ("--sample-annotators", options.sample_annotators))
              if given is not None]
    if "--sample-annotators" in chosen and len(chosen) > 1:
        raise L2DError(f"{chosen[0]}: not with --sample-annotators, whose experts are pooled")
    if options.split_column and options.test_fraction is not None:
        raise L2DError("--test-fraction: not with --split-column; choose one split")
    for flag, value in (("--min-annotations", options.min_annotations),
                        ("--top-annotators", options.top_annotators),
                        ("--sample-annotators", options.sample_annotators)):
        if value is not None and value < 1:
            raise L2DError(f"{flag}={value}: must be at least 1")
    sources = [flag for flag, given in (("--groundtruth-column", options.groundtruth_column),
                                        ("--groundtruth", options.groundtruth)) if given]
    if len(sources) != 1:
        raise L2DError("give the ground truth once: --groundtruth-column COLUMN, --groundtruth "
                       "TRAIN.json[,TEST.json] or --groundtruth majority")
    if options.test_fraction is not None and not 0 < options.test_fraction < 1:
        raise L2DError(f"--test-fraction={options.test_fraction}: must be in (0, 1)")


def groundtruth_manifests(options: ImportOptions) -> list[Path]:
    if options.groundtruth in (None, MAJORITY):
        return []
    manifests = [Path(os.path.abspath(p)) for p in options.groundtruth.split(",")]
    if len(manifests) > 2:
        raise L2DError(f"--groundtruth={options.groundtruth}: one manifest, or two "
                       "(training and test)")
    return manifests


class Cell(str):
    """A table cell in ``--file-pattern``: as written (``{id}`` keeps ``00042``), or as an
    integer under an integer format (``{id:05d}``)."""

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "bdoxXn":
            return format(int(self), spec)
        return super().__format__(spec)


def item_file(options: ImportOptions, where: str, item: str, row: Row) -> str:
    """The absolute image path of a table's item."""
    if options.file_pattern:
        columns = {key: Cell(value) for key, value in row.values.items()
                   if key.isidentifier() and value is not None}
        try:
            name = options.file_pattern.format(**{**columns, "id": Cell(item)})
        except (ValueError, KeyError, IndexError, AttributeError) as error:
            raise L2DError(f"{where}: --file-pattern={options.file_pattern} cannot format item "
                           f"{item!r}: {type(error).__name__} {error}") from None
    else:
        name = item
    root = options.images_root or options.table.parent
    return os.path.normpath(os.path.join(os.path.abspath(root), name))


def row_filter(options: ImportOptions, rows: list[Row]):
    """``keep(row)`` of the ``--where`` conditions; L2DError for one that names no column."""
    conditions = []
    for condition in options.where:
        column, equal, value = condition.partition("!=")
        if not equal:
            column, equal, value = condition.partition("=")
        if not equal or not column:
            raise L2DError(f"--where={condition}: expected COLUMN=VALUE or COLUMN!=VALUE")
        if not any(column in row.values for row in rows):
            raise L2DError(f"--where={condition}: {options.table} has no column {column!r}")
        conditions.append((column, equal == "=", value))
    return lambda row: all((row.values.get(column) == value) == wanted
                           for column, wanted, value in conditions)


def table_annotations(options: ImportOptions) -> tuple[list[Annotation], dict]:
    """The table's annotations, its rows' ground truth and split columns by file, and how many
    rows ``--where`` left out and how many had no label."""
    rows = read_table(options.table, Columns(options.item_column, options.annotator_column,
                                             options.label_column))
    keep = row_filter(options, rows)
    for column in options.label_columns or (options.label_column,):
        if not any(column in row.values for row in rows):
            raise L2DError(f"{options.table}: no column {column!r} (columns: "
                           f"{', '.join(rows[0].values)})")
    annotations = []
    columns = {"groundtruth": {}, "split": {}, "left_out": 0, "without_label": 0}
    for row in rows:
        if not keep(row):
            columns["left_out"] += 1
            continue
        where = f"{options.table}: row {row.number}"
        file = item_file(options, where, row.get(options.table, options.item_column), row)
        if options.label_columns:
            labelled = [(column, row.values.get(column)) for column in options.label_columns]
        else:
            labelled = [(row.get(options.table, options.annotator_column),
                         row.values.get(options.label_column))]
        for annotator, label in labelled:
            if label in (None, ""):
                columns["without_label"] += 1
            else:
                annotations.append(Annotation(where, file, annotator, label))
        for key, column in (("groundtruth", options.groundtruth_column),
                            ("split", options.split_column)):
            if column:
                value = row.get(options.table, column)
                seen = columns[key].setdefault(file, (value, where))
                if seen[0] != value:
                    raise L2DError(f"{where}: column {column!r} gives {value!r} for "
                                   f"{os.path.basename(file)!r}, {seen[1]} gave {seen[0]!r}")
    return annotations, columns


def count_annotations(options: ImportOptions) -> list[Annotation]:
    """One annotation per vote of the ``--counts`` matrix, by an annotator per vote."""
    try:
        counts = np.load(options.counts)
    except (OSError, ValueError) as error:
        raise L2DError(f"{options.counts}: cannot read the vote counts: {error}") from None
    files = [file for file, _ in read_manifest(options.order, allow_null_labels=True)]
    if counts.ndim != 2 or counts.shape[0] != len(files):
        raise L2DError(f"{options.counts}: shape {counts.shape}, expected N x C with N = "
                       f"{len(files)}, the images of --order {options.order}")
    if not np.issubdtype(counts.dtype, np.number) or np.any(counts < 0) or np.any(
            counts != np.round(counts)):
        raise L2DError(f"{options.counts}: vote counts must be non-negative integers")
    annotations = []
    for row, (file, votes) in enumerate(zip(files, counts.astype(np.int64)), 1):
        where = f"{options.counts}: row {row}"
        for label in np.repeat(np.arange(len(votes)), votes).tolist():
            annotations.append(Annotation(where, file, "", str(label)))
    return annotations


def as_index(label: str) -> int | None:
    """The class index a label writes (``3``, or ``3.0`` as a table with gaps writes it), or
    None for a class name."""
    match = _INDEX.fullmatch(label.strip())
    return None if match is None else int(match.group(1))


def class_names(options: ImportOptions, labelled: list[tuple[str, str]],
                groundtruth: dict[str, int]) -> list[str]:
    """The classes' names by index (step 2 of the module docstring), from ``labelled`` (where,
    label) and the ground truth of the manifests (file -> index)."""
    path = options.classes
    manifests = groundtruth_manifests(options)
    if path is None and manifests and (manifests[0].parent / CLASSES_FILE).is_file():
        path = manifests[0].parent / CLASSES_FILE
    if path is not None:
        try:
            names = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise L2DError(f"{path}: cannot read the class names: {error}") from None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise L2DError(f"{path}: expected a JSON list of class names")
        return names
    indices = [as_index(label) for _, label in labelled]
    if None not in indices:
        used = set(indices) | set(groundtruth.values())
        unused = sorted(set(range(max(used) + 1)) - used)
        if unused:
            raise L2DError(f"class indices {', '.join(map(str, unused[:5]))} appear in no label "
                           f"(the largest is {max(used)}); give --classes to declare them")
        return [str(c) for c in range(max(used) + 1)]
    if manifests:
        where = next(where for (where, _), index in zip(labelled, indices) if index is None)
        raise L2DError(f"{where}: class names, but the --groundtruth manifests give indices: "
                       "give --classes (or classes.json beside them) to map one to the other")
    return sort_class_names(sorted({label for _, label in labelled}))


def class_index(names: list[str], label: str, where: str) -> int:
    if label in names:
        return names.index(label)
    index = as_index(label)
    if index is not None and index < len(names):
        return index
    raise L2DError(f"{where}: unknown class {label!r} (classes: {', '.join(names[:12])}"
                   f"{', ...' if len(names) > 12 else ''})")


def majority(labels: list[int]) -> int:
    """The most frequent label, the smallest among a tie."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def drawn_order(seed: int, file: str, count: int) -> np.ndarray:
    """A permutation of ``count`` labels of one image, drawn from (seed, its path)."""
    digest = hashlib.blake2b(f"l2d-annotations\0{seed}\0{file}".encode("utf-8",
                                                                      "surrogatepass"),
                             digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(count)


def import_annotations(options: ImportOptions) -> dict:
    """Write the manifests (module docstring); return the summary it writes."""
    check_options(options)
    manifests = groundtruth_manifests(options)
    if options.counts is not None:
        annotations = count_annotations(options)
        columns = {"groundtruth": {}, "split": {}, "left_out": 0, "without_label": 0}
    else:
        annotations, columns = table_annotations(options)
        if not annotations:
            raise L2DError(f"{options.table}: no annotation is left"
                           + (" after --where" if options.where else ""))

    truth, split_of = manifests_truth(manifests)
    names = class_names(options, [(a.where, a.label) for a in annotations] + [
        (where, value) for value, where in columns["groundtruth"].values()], truth)
    if truth and max(truth.values()) >= len(names):
        raise L2DError(f"{manifests[0]}: label {max(truth.values())} is outside the "
                       f"{len(names)} classes")
    indices = [class_index(names, a.label, a.where) for a in annotations]
    if manifests:
        for annotation in annotations:
            if annotation.file not in truth:
                raise L2DError(f"{annotation.where}: unknown item {annotation.file!r}: not in "
                               f"--groundtruth {options.groundtruth}")
    else:
        truth = table_truth(options, annotations, indices, names, columns["groundtruth"])
    split_of = splits(options, truth, split_of, names, columns["split"])
    if options.counts is None:
        check_one_label_each(annotations)
    experts = expert_labels(options, annotations, indices)
    rows = {"rows_left_out": columns["left_out"], "labels_empty": columns["without_label"]}
    return write_outputs(options, names, truth, split_of, experts, rows)


def manifests_truth(manifests: list[Path]) -> tuple[dict[str, int], dict[str, str]]:
    """The ground truth of the ``--groundtruth`` manifests, and their split if there are two."""
    truth: dict[str, int] = {}
    split_of: dict[str, str] = {}
    first: dict[str, Path] = {}
    for split, manifest in zip(SPLITS if len(manifests) == 2 else ("",), manifests):
        for file, label in read_manifest(manifest):
            if file in first:
                raise L2DError(f"{manifest}: {file!r} is in {first[file]} too; an image "
                               "belongs to one split")
            first[file] = manifest
            truth[file] = label
            if split:
                split_of[file] = split
    return truth, split_of


def table_truth(options: ImportOptions, annotations: list[Annotation], indices: list[int],
                names: list[str], column: dict[str, tuple[str, str]]) -> dict[str, int]:
    """The ground truth of every image the table names (in sorted order), from its column or by
    majority vote; L2DError for an image that does not exist."""
    if options.groundtruth_column:
        truth = {file: class_index(names, value, where)
                 for file, (value, where) in sorted(column.items())}
        where_of = {file: where for file, (_, where) in column.items()}
    else:
        votes: dict[str, list[int]] = {}
        for annotation, index in zip(annotations, indices):
            votes.setdefault(annotation.file, []).append(index)
        truth = {file: majority(votes[file]) for file in sorted(votes)}
        where_of = {annotation.file: annotation.where for annotation in annotations}
    for file in truth:
        if not os.path.isfile(file):
            raise L2DError(f"{where_of[file]}: unknown item: no image {file!r}")
    return truth


def splits(options: ImportOptions, truth: dict[str, int], split_of: dict[str, str],
           names: list[str], column: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Each image's split (step 4 of the module docstring); ``split_of``: the manifests'."""
    if options.split_column:
        if split_of:
            raise L2DError("--split-column: not with two --groundtruth manifests, which split "
                           "the images already")
        if len(options.split_values) != 2:
            raise L2DError(f"--split-values={','.join(options.split_values)}: expected two "
                           "values, TRAIN,TEST")
        meaning = dict(zip(options.split_values, SPLITS))
        for file, (value, where) in column.items():
            if value not in meaning:
                raise L2DError(f"{where}: split {value!r}, expected "
                               f"{' or '.join(options.split_values)} (--split-values)")
            split_of[file] = meaning[value]
    elif options.test_fraction is not None:
        if split_of:
            raise L2DError("--test-fraction: not with two --groundtruth manifests, which split "
                           "the images already")
        files = sorted(truth)
        per_class = [[f for f in files if truth[f] == c] for c in range(len(names))]
        train, test = stratified_split([c for c in per_class if c], options.test_fraction,
                                       options.seed)
        split_of = {**dict.fromkeys(train.files, "train"), **dict.fromkeys(test.files, "test")}
    elif not split_of:
        raise L2DError("no split: give --split-column, two --groundtruth manifests (training "
                       "and test) or --test-fraction")
    missing_split = next((f for f in truth if f not in split_of), None)
    if missing_split is not None:
        raise L2DError(f"--groundtruth {options.groundtruth}: {missing_split!r} is in no row "
                       f"of {options.table}, which gives the split (--split-column)")
    return split_of


def check_one_label_each(annotations: list[Annotation]) -> None:
    """L2DError naming the row where an annotator labels an image a second time."""
    first_row: dict[tuple[str, str], str] = {}
    for annotation in annotations:
        key = (annotation.annotator, annotation.file)
        if key in first_row:
            raise L2DError(f"{annotation.where}: annotator {annotation.annotator!r} labels "
                           f"{os.path.basename(annotation.file)!r} twice (first at "
                           f"{first_row[key].rsplit(': ', 1)[-1]})")
        first_row[key] = annotation.where


def expert_labels(options: ImportOptions, annotations: list[Annotation],
                  indices: list[int]) -> dict[str, dict[str, int]]:
    """Expert name -> {file: class index} (step 5 of the module docstring)."""
    if options.sample_annotators is not None:
        by_file: dict[str, list[tuple[str, int]]] = {}
        for annotation, index in zip(annotations, indices):
            by_file.setdefault(annotation.file, []).append((annotation.annotator, index))
        most = max(len(labels) for labels in by_file.values())
        if options.sample_annotators > most:
            raise L2DError(f"--sample-annotators={options.sample_annotators}: no image has more "
                           f"than {most} labels")
        # The draw of an image depends on its path below the images' folder, not on where
        # that folder lies.
        base = options.images_root or (options.table or options.order).parent
        pooled = {f"pooled_{s + 1}": {} for s in range(options.sample_annotators)}
        for file, labels in by_file.items():
            labels.sort()
            key = Path(os.path.relpath(file, os.path.abspath(base))).as_posix()
            for s, drawn in enumerate(drawn_order(options.seed, key, len(labels))[
                    :options.sample_annotators]):
                pooled[f"pooled_{s + 1}"][file] = labels[drawn][1]
        return pooled
    by_annotator: dict[str, dict[str, int]] = {}
    for annotation, index in zip(annotations, indices):
        by_annotator.setdefault(annotation.annotator, {})[annotation.file] = index
    ranked = sorted(by_annotator, key=lambda name: (-len(by_annotator[name]), name))
    minimum = options.min_annotations or 1
    kept = [name for name in ranked if len(by_annotator[name]) >= minimum]
    if options.top_annotators is not None:
        kept = kept[:options.top_annotators]
    if not kept:
        raise L2DError(f"no annotator has at least --min-annotations={minimum} "
                       f"labels (the most has {len(by_annotator[ranked[0]])})")
    return {name: by_annotator[name] for name in sorted(kept)}


def file_names(experts: list[str]) -> dict[str, str]:
    """Expert name -> the part of its manifests' names: safe characters only, distinct."""
    safe = {name: _UNSAFE.sub("_", name) for name in experts}
    seen: dict[str, str] = {}
    for name, part in safe.items():
        if part == "groundtruth":
            raise L2DError(f"annotator {name!r} would write train_groundtruth.json, the ground "
                           "truth's manifest")
        if part in seen:
            raise L2DError(f"annotators {seen[part]!r} and {name!r} would write the same "
                           f"manifest train_{part}.json")
        seen[part] = name
    return safe


def write_outputs(options: ImportOptions, names: list[str], truth: dict[str, int],
                  split_of: dict[str, str], experts: dict[str, dict[str, int]],
                  rows: dict[str, int]) -> dict:
    output = Path(os.path.abspath(options.output))
    files = {split: [f for f in truth if split_of[f] == split] for split in SPLITS}
    for split in SPLITS:
        if not files[split]:
            raise L2DError(f"the {split} split has no image")

    def manifest(split: str, labels: dict[str, int | None]) -> str:
        return "[\n" + ",\n".join(json.dumps({
            "file": Path(os.path.relpath(file, output)).as_posix(), "label": labels.get(file)})
            for file in files[split]) + "\n]\n"

    parts = file_names(list(experts))
    texts = {f"{split}_groundtruth.json": manifest(split, truth) for split in SPLITS}
    for name, labels in experts.items():
        for split in SPLITS:
            texts[f"{split}_{parts[name]}.json"] = manifest(split, labels)
    summary = {**summarise(options, names, truth, split_of, experts), **rows}
    texts[CLASSES_FILE] = json.dumps(names) + "\n"
    texts[SUMMARY_FILE] = json.dumps(summary, indent=2) + "\n"
    # A folder names its experts by their files (--train-files DIR): another import's would
    # join them.
    others = sorted(path.name for split in SPLITS for path in output.glob(f"{split}_*.json")
                    if path.name not in texts)
    if others:
        raise L2DError(f"--output {output}: holds {others[0]} of another import; use a new "
                       "folder")
    output.mkdir(parents=True, exist_ok=True)
    write_all(output, texts)
    return summary


def summarise(options: ImportOptions, names: list[str], truth: dict[str, int],
              split_of: dict[str, str], experts: dict[str, dict[str, int]]) -> dict:
    """What was imported: per expert its labels, agreement with the ground truth and missing
    share; the images by how many experts labelled them."""
    per_image = Counter(sum(file in labels for labels in experts.values()) for file in truth)
    groundtruth = (f"column {options.groundtruth_column}" if options.groundtruth_column
                   else MAJORITY_RULE if options.groundtruth == MAJORITY
                   else f"manifests {options.groundtruth}")
    return {
        "classes": len(names),
        "images": {split: sum(1 for s in split_of.values() if s == split) for split in SPLITS},
        "groundtruth": groundtruth,
        "experts": [{
            "name": name,
            "labels": len(labels),
            **{f"{split}_labels": sum(split_of[f] == split for f in labels) for split in SPLITS},
            "agreement": sum(truth[f] == label for f, label in labels.items()) / len(labels),
            "missing": 1 - len(labels) / len(truth),
        } for name, labels in experts.items()],
        "images_by_number_of_labels": {str(n): per_image[n] for n in sorted(per_image)},
    }
