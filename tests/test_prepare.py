"""Tests of l2d.data.prepare: image folders and tar archives -> ground-truth manifests."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from conftest import raises_one_line
from PIL import Image

from l2d.data.manifest import read_manifest
from l2d.data.prepare import prepare_dataset, sort_class_names

OUTPUTS = ("train_groundtruth.json", "test_groundtruth.json", "classes.json")


def _png(path, size=4, channels=3, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.full((size, size, channels), value, dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)


def _classes(root, counts: dict[str, int], **image):
    """``counts[name]`` PNG images in ``root/name/``."""
    for name, n in counts.items():
        for i in range(n):
            _png(os.path.join(root, name, f"{i:03d}.png"), value=i, **image)


def _entries(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _nothing_written(output):
    assert not any(os.path.exists(os.path.join(output, name)) for name in OUTPUTS)


def test_class_folders_get_a_stratified_split(tmp_path):
    source = tmp_path / "src"
    _classes(source, {"cat": 10, "ant": 5, "bee": 1})
    (source / "ant" / "notes.txt").write_text("not an image")
    _png(str(source / "cat" / "deeper" / "x.PNG"))  # nested and mixed-case names count
    (source / "README.md").write_text("beside the classes")
    output = tmp_path / "out"

    result = prepare_dataset(source, output, test_share=0.2, seed=0, num_threads=1)

    assert result["layout"] == "stratified split"
    assert json.loads((output / "classes.json").read_text()) == ["ant", "bee", "cat"]
    assert result["num_classes"] == 3 and result["ignored_files"] == 2
    assert result["image_shape"] == (4, 4, 3)
    train = read_manifest(result["train_groundtruth"])
    test = read_manifest(result["test_groundtruth"])
    # round(0.2 * n) per class: ant 1 of 5, bee 0 of 1 (keeps its one training image), cat 2 of 11.
    assert np.bincount([label for _, label in test], minlength=3).tolist() == [1, 0, 2]
    assert np.bincount([label for _, label in train], minlength=3).tolist() == [4, 1, 9]
    assert (result["num_train"], result["num_test"]) == (14, 3)
    assert not {f for f, _ in train} & {f for f, _ in test}
    for file, label in train + test:
        assert os.path.isfile(file)
        assert os.path.relpath(file, source).split(os.sep)[0] == ["ant", "bee", "cat"][label]
    # Paths are relative to the manifest folder; each class's files are in sorted order.
    entries = _entries(result["train_groundtruth"])
    assert all(e["file"].startswith("../src/") for e in entries)
    for label in range(3):
        files = [e["file"] for e in entries if e["label"] == label]
        assert files == sorted(files, key=lambda f: f.split("/"))


def test_split_shares_round_and_keep_one_training_image(tmp_path):
    source = tmp_path / "src"
    _classes(source, {"a": 3, "b": 2, "c": 40})
    result = prepare_dataset(source, tmp_path / "out", test_share=0.5, seed=1, num_threads=1)
    test = [e["label"] for e in _entries(result["test_groundtruth"])]
    # a: 1.5 rounds up to 2; b: 1 of 2; c: 20 of 40.
    assert np.bincount(test).tolist() == [2, 1, 20]
    result = prepare_dataset(source, tmp_path / "out", test_share=0.9, seed=1, num_threads=1)
    train = [e["label"] for e in _entries(result["train_groundtruth"])]
    assert np.bincount(train).tolist() == [1, 1, 4]


def test_split_is_deterministic_under_the_seed(tmp_path):
    source = tmp_path / "src"
    _classes(source, {"x": 20, "y": 20})

    def run(name, seed):
        result = prepare_dataset(source, tmp_path / name, seed=seed, num_threads=1)
        return (open(result["test_groundtruth"]).read(), _text(result["train_groundtruth"]))

    assert run("a", 7) == run("b", 7)
    assert run("a", 7) != run("c", 8)


@pytest.mark.parametrize("names, expected", [
    (["10", "2", "1", "03"], ["1", "2", "03", "10"]),  # all integers: numeric order
    (["10", "2", "cat"], ["10", "2", "cat"]),  # otherwise Python's string order
    (["b", "B", "a"], ["B", "a", "b"]),
])
def test_class_order(tmp_path, names, expected):
    assert sort_class_names(names) == expected
    _classes(tmp_path / "src", {name: 5 for name in names})
    result = prepare_dataset(tmp_path / "src", tmp_path / "out", num_threads=1)
    assert _entries(result["classes"]) == expected
    for e in _entries(result["train_groundtruth"]):
        assert e["file"].split("/")[2] == expected[e["label"]]


def _train_test_tree(root, train=None, test=None):
    _classes(os.path.join(root, "train"), train or {"0": 3, "1": 2})
    _classes(os.path.join(root, "test"), test or {"0": 1, "1": 2})


def test_train_and_test_folders_are_used_as_they_are(tmp_path):
    _train_test_tree(tmp_path / "src")
    result = prepare_dataset(tmp_path / "src", tmp_path / "out", num_threads=1)
    assert result["layout"] == "train/test folders"
    assert [e["label"] for e in _entries(result["train_groundtruth"])] == [0, 0, 0, 1, 1]
    assert _entries(result["test_groundtruth"]) == [
        {"file": "../src/test/0/000.png", "label": 0},
        {"file": "../src/test/1/000.png", "label": 1},
        {"file": "../src/test/1/001.png", "label": 1},
    ]


def _tar(path, root, arcname):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname=arcname)


def test_archive_with_a_wrapping_folder_is_unpacked_once(tmp_path, monkeypatch):
    _train_test_tree(tmp_path / "tree")
    archive = tmp_path / "data.tar.gz"
    _tar(archive, tmp_path / "tree", "wrapper")
    output = tmp_path / "out"

    result = prepare_dataset(archive, output, num_threads=1)

    assert result["root"] == str(output / "images" / "wrapper")
    assert (result["num_train"], result["num_test"], result["num_classes"]) == (5, 3, 2)
    assert _entries(result["test_groundtruth"])[0] == {
        "file": "images/wrapper/test/0/000.png", "label": 0}
    assert all(os.path.isfile(f) for f, _ in read_manifest(result["train_groundtruth"]))
    first = _text(result["train_groundtruth"])
    # A complete unpack is reused: the archive is not opened again.
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("unpacked twice"))
    assert prepare_dataset(archive, output, num_threads=1) == result
    assert _text(result["train_groundtruth"]) == first


def test_archive_of_class_folders(tmp_path):
    _classes(tmp_path / "tree", {"a": 5, "b": 5})
    archive = tmp_path / "data.tgz"
    _tar(archive, tmp_path / "tree", ".")
    result = prepare_dataset(archive, tmp_path / "out", num_threads=1)
    assert (result["num_train"], result["num_test"]) == (8, 2)
    assert result["root"] == str(tmp_path / "out" / "images")


@pytest.mark.parametrize("name", ["../evil.png", "/tmp/l2d-evil.png", "a/../../evil.png"])
def test_archive_members_outside_the_folder_are_refused(tmp_path, name):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    raises_one_line(lambda: prepare_dataset(archive, tmp_path / "out"), str(archive), repr(name))
    assert not (tmp_path / "evil.png").exists() and not os.path.exists("/tmp/l2d-evil.png")
    assert not (tmp_path / "out" / "images").exists()


def test_errors_name_the_folder_and_write_nothing(tmp_path):
    output = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_one_line(lambda: prepare_dataset(empty, output), str(empty), "empty")

    loose = tmp_path / "loose"
    _png(str(loose / "a.png"))
    raises_one_line(lambda: prepare_dataset(loose, output), str(loose), "no class folders")

    no_images = tmp_path / "no_images"
    _classes(no_images, {"a": 2})
    (no_images / "b").mkdir()
    (no_images / "b" / "readme.txt").write_text("x")
    raises_one_line(lambda: prepare_dataset(no_images, output), str(no_images / "b"), "no images")

    raises_one_line(lambda: prepare_dataset(tmp_path / "missing", output), "missing", "no such")
    raises_one_line(lambda: prepare_dataset(empty, output, test_share=1.0), "test_share")
    assert not output.exists()


def test_unreadable_image_is_named(tmp_path):
    source = tmp_path / "src"
    _classes(source, {"a": 4, "b": 4})
    (source / "b" / "002.png").write_bytes(b"not a png")
    message = raises_one_line(lambda: prepare_dataset(source, tmp_path / "out", num_threads=1),
                      str(source / "b" / "002.png"), "cannot be decoded", "no manifest")
    assert "split" in message
    assert not (tmp_path / "out").exists()


def test_mixed_shapes_are_refused(tmp_path):
    source = tmp_path / "src"
    _classes(source, {"a": 3, "b": 3})
    _png(str(source / "b" / "001.png"), size=5)
    raises_one_line(lambda: prepare_dataset(source, tmp_path / "out", num_threads=1),
            str(source / "b" / "001.png"), "(5, 5, 3)", "(4, 4, 3)")
    # Train and test each of one shape, but different from each other.
    split = tmp_path / "split"
    _classes(split / "train", {"a": 2, "b": 2})
    _classes(split / "test", {"a": 1, "b": 1}, channels=1)
    raises_one_line(lambda: prepare_dataset(split, tmp_path / "out", num_threads=1),
            "(4, 4, 1)", "(4, 4, 3)")
    assert not (tmp_path / "out").exists()


def test_train_and_test_must_hold_the_same_classes(tmp_path):
    source = tmp_path / "src"
    _train_test_tree(source, train={"0": 1, "1": 1, "2": 1}, test={"0": 1, "1": 1, "3": 1})
    raises_one_line(lambda: prepare_dataset(source, tmp_path / "out"), str(source),
            "only in train/: ['2']", "only in test/: ['3']")
    only_train = tmp_path / "only_train"
    _classes(only_train / "train", {"0": 1, "1": 1})
    (only_train / "other").mkdir()
    raises_one_line(lambda: prepare_dataset(only_train, tmp_path / "out"), "no test/ folder")
    _nothing_written(tmp_path / "out")
