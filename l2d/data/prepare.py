"""An image folder (one subfolder per class) -> ground-truth manifests, checked image by image.

``prepare_dataset(source, output)`` reads a folder, or a ``.tar.gz``/``.tgz``/``.tar`` archive that
is first unpacked into ``output/images/``, and writes into ``output/``::

    train_groundtruth.json   [{"file": ..., "label": ...}], files relative to output/
    test_groundtruth.json
    classes.json             ["name of class 0", "name of class 1", ...]

Layout of the (unpacked) root, after stepping into a single wrapping folder if there is one:

- ``train/<class>/...`` and ``test/<class>/...``: that split is used as it is; both must hold the
  same class folders;
- otherwise ``<class>/...``: each class is split on its own (stratified) with a generator seeded by
  ``(seed, class index)``; ``round(test_share * n)`` images of a class go to the test split (halves
  round up), but every class keeps at least one training image.

Class order: numeric if every class folder name is a non-negative integer ("2" before "10"),
otherwise Python's string order; a class's label is its position in that order.

Images are the files ending in ``l2d.data.images.IMAGE_SUFFIXES`` (any case), at any depth below
a class folder; other files are ignored and counted. Names starting with "." are skipped. Every
image is decoded once (``l2d.data.images.decode_all``) so that an unreadable image, or one whose
shape differs from the others, is reported now, naming the file. Manifests are written only when
everything is valid, under temporary names renamed at the end: a failed run writes no manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from l2d.data.images import IMAGE_SUFFIXES, decode_all
from l2d.data.manifest import SplitRecords
from l2d.errors import L2DError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
UNPACK_FOLDER = "images"  # an archive is unpacked into output/images/
# Written into the unpack folder before it gets its final name: its presence means "complete".
UNPACK_MARKER = ".l2d_unpacked.json"
SPLIT_FOLDERS = ("train", "test")
TRAIN_MANIFEST = "train_groundtruth.json"
TEST_MANIFEST = "test_groundtruth.json"
CLASSES_FILE = "classes.json"
_INTEGER = re.compile(r"[0-9]+")


@dataclass
class _Split:
    """Images of one split, grouped by class, as absolute paths."""

    files: list[str]
    labels: list[int]


def prepare_dataset(source: Path, output: Path, *, test_share: float = 0.2, seed: int = 0,
                    num_threads: int = 4, train_per_class: int | None = None) -> dict:
    """Write ``train_groundtruth.json``, ``test_groundtruth.json``, ``classes.json`` in ``output``.

    Returns ``{"train_groundtruth": str, "test_groundtruth": str, "classes": str, "num_train": int,
    "num_test": int, "num_classes": int, "class_names": [str], "image_shape": (H, W, C),
    "layout": "train/test folders" | "stratified split", "root": str (the folder whose class
    folders were read), "ignored_files": int (non-image files skipped)}``.
    ``train_per_class`` keeps that many training images of each class (a seeded choice, for runs
    that must be short); the test split stays whole.
    Raises L2DError (one line) for any problem; no manifest is written then.
    """
    if train_per_class is not None and train_per_class < 1:
        raise L2DError(f"--train-per-class={train_per_class}: must be at least 1")
    if isinstance(test_share, bool) or not isinstance(test_share, (int, float)) \
            or not 0.0 < test_share < 1.0:
        raise L2DError(f"test_share must be a number in (0, 1), got {test_share!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise L2DError(f"seed must be a non-negative integer, got {seed!r}")
    source = Path(os.path.abspath(source))
    output = Path(os.path.abspath(output))

    if source.is_dir():
        root = source
    elif source.is_file():
        if not source.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise L2DError(f"{source}: not a folder nor a tar archive "
                           f"({', '.join(ARCHIVE_SUFFIXES)})")
        root = unpack_archive(source, output / UNPACK_FOLDER)
    else:
        raise L2DError(f"{source}: no such folder or archive")

    scan = _Scanner(skip=output)
    root = scan.unwrap(root)
    dirs = scan.subfolders(root)
    present = [name for name in SPLIT_FOLDERS if name in dirs]
    if present:
        if len(present) == 1:
            missing = next(name for name in SPLIT_FOLDERS if name not in dirs)
            raise L2DError(f"{root}: has a {present[0]}/ folder but no {missing}/ folder "
                           "(expected both, or one folder per class)")
        layout = "train/test folders"
        train_classes = scan.subfolders(root / "train")
        test_classes = scan.subfolders(root / "test")
        for name, classes in (("train", train_classes), ("test", test_classes)):
            if not classes:
                raise L2DError(f"{root / name}: no class folders (expected one subfolder per "
                               "class)")
        if set(train_classes) != set(test_classes):
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            raise L2DError(f"{root}: train/ and test/ hold different class folders "
                           f"(only in train/: {only_train}; only in test/: {only_test})")
        names = sort_class_names(list(train_classes))
        train = _Split([], [])
        test = _Split([], [])
        for label, name in enumerate(names):
            for split, folder in ((train, root / "train" / name), (test, root / "test" / name)):
                files = scan.images(folder)
                split.files += files
                split.labels += [label] * len(files)
    else:
        if not dirs:
            if scan.is_empty(root):
                raise L2DError(f"{root}: folder is empty")
            raise L2DError(f"{root}: no class folders (expected one subfolder per class, or "
                           "train/ and test/ folders holding them)")
        layout = "stratified split"
        names = sort_class_names(list(dirs))
        train, test = stratified_split(
            [scan.images(root / name) for name in names], test_share, seed)
        if not test.files:
            raise L2DError(f"{root}: too few images for a test split with test_share="
                           f"{test_share} (every class keeps at least one training image)")

    if train_per_class is not None:
        train = _subset_per_class(train, train_per_class, seed)
    splits = {"train": train, "test": test}
    shapes = {}
    for split_name, split in splits.items():
        records = SplitRecords(
            # Errors then read "<root>: train split: entry i (file): image cannot be decoded".
            groundtruth_path=f"{root}: {split_name} split",
            expert_paths=(),
            files=tuple(split.files),
            labels=np.asarray(split.labels, dtype=np.int32),
            expert_labels=np.zeros((len(split.files), 0), dtype=np.int32),
        )
        try:
            shapes[split_name] = decode_all(records, num_threads=num_threads, keep=False).shape
        except L2DError as e:
            raise L2DError(f"{e}; no manifest was written") from None
    if shapes["train"] != shapes["test"]:
        raise L2DError(f"{root}: test images have shape {shapes['test']} but training images "
                       f"{shapes['train']} ({test.files[0]!r} vs {train.files[0]!r}); no "
                       "manifest was written")

    output.mkdir(parents=True, exist_ok=True)
    written = write_all(output, {
        TRAIN_MANIFEST: _manifest_text(output, train),
        TEST_MANIFEST: _manifest_text(output, test),
        CLASSES_FILE: json.dumps(names, indent=1) + "\n",
    })
    return {
        "train_groundtruth": written[TRAIN_MANIFEST],
        "test_groundtruth": written[TEST_MANIFEST],
        "classes": written[CLASSES_FILE],
        "num_train": len(train.files),
        "num_test": len(test.files),
        "num_classes": len(names),
        "class_names": names,
        "image_shape": shapes["train"],
        "layout": layout,
        "root": str(root),
        "ignored_files": scan.ignored,
    }


def sort_class_names(names: list[str]) -> list[str]:
    """Numeric order if every name is a non-negative integer (ties such as "1"/"01" by string),
    otherwise Python's string order. A class's label is its position in this list."""
    if names and all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def unpack_archive(archive: Path, folder: Path) -> Path:
    """Unpack a tar archive into ``folder`` once; later calls find the marker and skip it.

    Members with absolute paths or ``..`` are refused, and tarfile's ``data`` filter rejects
    links that leave the folder, device files and the like. The archive is unpacked into a
    temporary sibling folder that is renamed only when complete.
    """
    stat = archive.stat()
    stamp = {"archive": archive.name, "size": stat.st_size}
    marker = folder / UNPACK_MARKER
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and {k: previous.get(k) for k in stamp} == stamp:
            return folder
        raise L2DError(f"{folder}: holds an unpack of another archive ({previous}); remove it "
                       "or choose another output folder")
    if folder.exists():
        raise L2DError(f"{folder}: exists but is not a complete unpack of {archive} (no "
                       f"{UNPACK_MARKER}); remove it or choose another output folder")

    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():  # left by an interrupted unpack; the name is this module's own
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts or "\\" in member.name:
                    raise L2DError(f"{archive}: member {member.name!r} has an absolute path or "
                                   "'..'; refusing to unpack it")
            tar.extractall(partial, members=members, filter="data")
        (partial / UNPACK_MARKER).write_text(json.dumps(stamp), encoding="utf-8")
        os.replace(partial, folder)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise L2DError(f"{archive}: cannot unpack archive: {e}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


class _Scanner:
    """Lists folders, skipping hidden names and ``skip`` (the output folder), counting ignored
    (non-image) files."""

    def __init__(self, skip: Path):
        self.skip = str(skip)
        self.ignored = 0
        self._counted: set[str] = set()  # folders whose loose files were counted already

    def _entries(self, folder: Path) -> tuple[dict[str, Path], list[str]]:
        """(subfolders by name, file names) of ``folder``, without hidden or skipped entries."""
        dirs, files = {}, []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(".") or entry.path == self.skip:
                        continue
                    if entry.is_dir():
                        dirs[entry.name] = Path(entry.path)
                    elif entry.is_file():
                        files.append(entry.name)
        except OSError as e:
            raise L2DError(f"{folder}: cannot list folder: {e.strerror}") from None
        return dirs, files

    def _count_loose(self, folder: Path, files: list[str]) -> None:
        """Files lying beside class folders belong to no class: ignored, counted once."""
        if str(folder) not in self._counted:
            self._counted.add(str(folder))
            self.ignored += len(files)

    def subfolders(self, folder: Path) -> dict[str, Path]:
        dirs, files = self._entries(folder)
        self._count_loose(folder, files)
        return dirs

    def is_empty(self, folder: Path) -> bool:
        dirs, files = self._entries(folder)
        return not dirs and not files

    def unwrap(self, root: Path) -> Path:
        """Step into a single wrapping folder (one folder holding folders, no images beside it)
        as long as there is one, but never into a train/ or test/ folder."""
        while True:
            dirs, files = self._entries(root)
            if len(dirs) != 1 or any(_is_image(f) for f in files):
                return root
            (name, inner), = dirs.items()
            if name in SPLIT_FOLDERS or not self._entries(inner)[0]:
                return root
            self._count_loose(root, files)
            root = inner

    def images(self, class_folder: Path) -> list[str]:
        """Absolute paths of the images at any depth below ``class_folder``, sorted by their
        path relative to it; raises L2DError if there is none."""
        found = []
        for folder, dirs, files in os.walk(class_folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                if _is_image(name):
                    found.append(os.path.join(folder, name))
                else:
                    self.ignored += 1
        if not found:
            raise L2DError(f"{class_folder}: class folder has no images "
                           f"({' '.join(sorted(IMAGE_SUFFIXES))})")
        prefix = len(str(class_folder)) + 1
        found.sort(key=lambda path: path[prefix:].split(os.sep))
        return found


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def stratified_split(per_class: list[list[str]], test_share: float,
                      seed: int) -> tuple[_Split, _Split]:
    """Per class c, a generator seeded by (seed, c) picks round(test_share * n) test images
    (at most n - 1); both splits keep each class's sorted file order."""
    train, test = _Split([], []), _Split([], [])
    for label, files in enumerate(per_class):
        n = len(files)
        num_test = min(int(np.floor(test_share * n + 0.5)), n - 1)
        chosen = np.zeros(n, dtype=bool)
        chosen[np.random.default_rng([seed, label]).permutation(n)[:num_test]] = True
        for split, keep in ((test, chosen), (train, ~chosen)):
            picked = [f for f, k in zip(files, keep.tolist()) if k]
            split.files += picked
            split.labels += [label] * len(picked)
    return train, test


def _subset_per_class(split: _Split, per_class: int, seed: int) -> _Split:
    """At most ``per_class`` files of each class, chosen by a generator seeded by (seed, class);
    the kept files stay in their original order."""
    labels = np.asarray(split.labels)
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen = np.random.default_rng([seed, int(label), 1]).permutation(members)[:per_class]
        keep[chosen] = True
    return _Split([f for f, k in zip(split.files, keep.tolist()) if k], labels[keep].tolist())


def _manifest_text(output: Path, split: _Split) -> str:
    """One entry per line; files relative to ``output`` (lexically, as read_manifest resolves)."""
    base = str(output)
    lines = [
        json.dumps({"file": Path(os.path.relpath(file, base)).as_posix(), "label": label})
        for file, label in zip(split.files, split.labels)
    ]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def write_all(folder: Path, texts: dict[str, str]) -> dict[str, str]:
    """Write every file under a temporary name first, then rename them all into place."""
    temporary = {name: folder / f".{name}.tmp-{os.getpid()}" for name in texts}
    try:
        for name, text in texts.items():
            temporary[name].write_text(text, encoding="utf-8")
        for name in texts:
            os.replace(temporary[name], folder / name)
    except OSError as e:
        for path in temporary.values():
            path.unlink(missing_ok=True)
        raise L2DError(f"{folder}: cannot write manifests: {e}") from None
    return {name: str(folder / name) for name in texts}
