"""Tests of l2d.data: manifest validation, expert alignment, decoding, batches."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from conftest import dump, load, make_dataset, raises_one_line
from PIL import Image

from l2d.data.images import decode_all
from l2d.data.manifest import (
    SplitRecords,
    check_labels,
    infer_num_classes,
    load_split,
    read_manifest,
)
from l2d.data.pipeline import (
    epoch_order,
    eval_batches,
    eval_steps,
    train_batches,
    train_steps_per_epoch,
)


def _train(d):
    return load_split(d["train_groundtruth"], d["train_experts"])


def _image_path(d, entry):
    folder = os.path.dirname(d["train_groundtruth"])
    return os.path.join(folder, load(d["train_groundtruth"])[entry]["file"])


# ---------------------------------------------------------------- manifest validation


@pytest.mark.parametrize(
    "content, fragments",
    [
        ('[{"file": "images/train_0000.png", "label": 0}', ["invalid JSON", "line 1"]),
        ({"file": "images/train_0000.png", "label": 0}, ["must be a JSON list"]),
        ([], ["no entries"]),
        ([{"file": "images/train_0000.png", "label": 0}, 5], ["entry 1", "object"]),
        ([{"file": "images/train_0000.png"}], ["entry 0", "'label'"]),
        ([{"label": 1}], ["entry 0", "'file'"]),
        ([{"file": "", "label": 1}], ["entry 0", "non-empty string"]),
        ([{"file": 3, "label": 1}], ["entry 0", "non-empty string"]),
        ([{"file": "a.png", "label": 0}, {"file": "b.png", "label": 3.0}], ["entry 1", "b.png"]),
        ([{"file": "a.png", "label": True}], ["entry 0", "a.png", "integer"]),
        ([{"file": "a.png", "label": "1"}], ["entry 0", "a.png", "integer"]),
        ([{"file": "a.png", "label": 0}, {"file": "b.png", "label": -1}], ["entry 1", "negative"]),
        (
            [{"file": "a.png", "label": 0}, {"file": "x/../a.png", "label": 1}],
            ["entry 1", "x/../a.png", "duplicate", "entry 0"],
        ),
    ],
)
def test_read_manifest_rejects_bad_content(tmp_path, content, fragments):
    path = str(tmp_path / "m.json")
    dump(path, content)
    raises_one_line(lambda: read_manifest(path), path, *fragments)


def test_missing_manifest(tmp_path):
    path = str(tmp_path / "nope.json")
    raises_one_line(lambda: read_manifest(path), path, "not found")


def test_relative_and_absolute_paths(tmp_path, tiny_dataset):
    sub = tmp_path / "sub"
    sub.mkdir()
    absolute = os.path.join(str(tmp_path), "images", "train_0000.png")
    path = str(sub / "m.json")
    dump(path, [{"file": absolute, "label": 1}, {"file": "../images/train_0001.png", "label": 2}])
    assert read_manifest(path) == [
        (absolute, 1),
        (os.path.join(str(tmp_path), "images", "train_0001.png"), 2),
    ]
    # The same file named absolutely and relatively is a duplicate.
    dump(path, [{"file": absolute, "label": 1}, {"file": "../images/train_0000.png", "label": 2}])
    raises_one_line(lambda: read_manifest(path), path, "entry 1", "duplicate")


def test_load_split_reads_fixture(tiny_dataset):
    split = _train(tiny_dataset)
    truth = load(tiny_dataset["train_groundtruth"])
    assert split.num_samples == 20 and split.num_experts == 2
    assert split.labels.dtype == np.int32 and split.expert_labels.dtype == np.int32
    assert split.expert_labels.shape == (20, 2)
    np.testing.assert_array_equal(split.labels, [e["label"] for e in truth])
    assert all(os.path.isabs(f) and os.path.isfile(f) for f in split.files)
    # Expert k is right exactly on the classes c with c % K == k (by the fixture's construction).
    for k in range(2):
        own = split.labels % 2 == k
        np.testing.assert_array_equal(split.expert_labels[own, k], split.labels[own])
    assert infer_num_classes(split, None) == 3
    assert infer_num_classes(split, 5) == 5


def test_experts_align_by_file_not_position(tiny_dataset):
    before = _train(tiny_dataset)
    path = tiny_dataset["train_experts"][1]
    entries = load(path)
    dump(path, [entries[i] for i in np.random.default_rng(1).permutation(len(entries))])
    after = _train(tiny_dataset)
    np.testing.assert_array_equal(after.expert_labels, before.expert_labels)
    assert after.files == before.files


def test_expert_missing_a_file(tiny_dataset):
    path = tiny_dataset["train_experts"][1]
    entries = load(path)
    dropped = entries.pop(4)["file"]
    dump(path, entries)
    raises_one_line(lambda: _train(tiny_dataset), path, os.path.basename(dropped), "entry 4")


def test_expert_with_an_extra_file(tiny_dataset):
    path = tiny_dataset["train_experts"][0]
    entries = load(path)
    entries.append({"file": "images/test_0000.png", "label": 0})
    dump(path, entries)
    raises_one_line(lambda: _train(tiny_dataset), path, "entry 20", "test_0000.png",
                    "not in the ground")


def test_no_experts(tiny_dataset):
    gt = tiny_dataset["train_groundtruth"]
    raises_one_line(lambda: load_split(gt, []), gt, "expert")


def test_missing_image_file(tiny_dataset):
    os.remove(_image_path(tiny_dataset, 7))
    gt = tiny_dataset["train_groundtruth"]
    raises_one_line(lambda: _train(tiny_dataset), gt, "entry 7", "not found")


def test_num_classes_smaller_than_labels(tiny_dataset):
    split = _train(tiny_dataset)
    row = int(np.argmax(split.labels == 2))
    raises_one_line(
        lambda: infer_num_classes(split, 2),
        tiny_dataset["train_groundtruth"],
        f"entry {row}",
        os.path.basename(split.files[row]),
        "label 2",
    )


def test_label_out_of_range(tiny_dataset):
    gt = tiny_dataset["test_groundtruth"]
    entries = load(gt)
    entries[3]["label"] = 7
    dump(gt, entries)
    split = load_split(gt, tiny_dataset["test_experts"])
    raises_one_line(lambda: check_labels(split, 3), gt, "entry 3", entries[3]["file"], "label 7")
    check_labels(split, 8)


def test_expert_label_out_of_range_names_the_expert_entry(tiny_dataset):
    path = tiny_dataset["test_experts"][1]
    entries = load(path)[::-1]  # reversed, so entry indices differ from the ground truth's
    entries[2]["label"] = 9
    dump(path, entries)
    split = load_split(tiny_dataset["test_groundtruth"], tiny_dataset["test_experts"])
    raises_one_line(lambda: check_labels(split, 3), path, "entry 2", entries[2]["file"], "label 9")


def test_negative_label_in_records_is_rejected(tiny_dataset):
    split = _train(tiny_dataset)
    labels = split.labels.copy()
    labels[5] = -2
    bad = type(split)(
        split.groundtruth_path, split.expert_paths, split.files, labels, split.expert_labels
    )
    raises_one_line(lambda: check_labels(bad, 3), split.groundtruth_path, "entry 5", "label -2")


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("keep", [True, False])
def test_decode_all_stats_match_numpy(tiny_dataset, keep):
    split = _train(tiny_dataset)
    decoded = decode_all(split, num_threads=2, keep=keep)
    pixels = np.stack([np.asarray(Image.open(f)) for f in split.files])
    assert decoded.shape == (8, 8, 3)
    scaled = pixels.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(decoded.channel_mean, scaled.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(decoded.channel_std, scaled.std(axis=0), rtol=1e-6)
    assert decoded.channel_mean.dtype == np.float32 and decoded.channel_std.dtype == np.float32
    if keep:
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags.c_contiguous
        np.testing.assert_array_equal(decoded.pixels, pixels)
    else:
        assert decoded.pixels is None


def test_grayscale_keeps_one_channel(tmp_path):
    d = make_dataset(tmp_path, num_train=6, num_test=2, num_classes=2, num_experts=1, channels=1)
    decoded = decode_all(_train(d), num_threads=1, keep=True)
    assert decoded.shape == (8, 8, 1) and decoded.pixels.shape == (6, 8, 8, 1)


def jpeg_split(folder, images: list[np.ndarray]) -> SplitRecords:
    """A split of ``images`` saved as JPEGs (labels 0)."""
    files = []
    for i, pixels in enumerate(images):
        files.append(str(folder / f"{i}.jpg"))
        Image.fromarray(pixels).save(files[-1])
    return SplitRecords(groundtruth_path="gt.json", expert_paths=(), files=tuple(files),
                        labels=np.zeros(len(files), np.int32),
                        expert_labels=np.zeros((len(files), 0), np.int32))


def test_a_grayscale_jpeg_is_one_channel_as_a_grayscale_png(tmp_path):
    gray = [np.full((8, 8), 40 * i, np.uint8) for i in range(3)]
    split = jpeg_split(tmp_path, gray)
    kept, streamed = _both_modes(split)
    assert kept.shape == (8, 8, 1) and kept.pixels.shape == (3, 8, 8, 1)
    np.testing.assert_allclose(kept.pixels[..., 0], np.stack(gray), atol=2)  # JPEG is lossy
    batches = _collect(eval_batches(split, streamed, batch_size=2, prefetch_size=1,
                                    num_threads=1))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:3],
                                  kept.pixels)
    # Among colour images it is refused, as a grayscale PNG is.
    colour = np.zeros((8, 8, 3), np.uint8)
    raises_one_line(lambda: decode_all(jpeg_split(tmp_path, [colour, gray[1]]), num_threads=1,
                                       keep=True), "entry 1", "(8, 8, 1) differs from (8, 8, 3)")


@pytest.mark.parametrize("keep", [True, False])
def test_undecodable_image(tiny_dataset, keep):
    with open(_image_path(tiny_dataset, 13), "wb") as f:
        f.write(b"not a png")
    split = _train(tiny_dataset)
    raises_one_line(
        lambda: decode_all(split, num_threads=2, keep=keep),
        tiny_dataset["train_groundtruth"],
        "entry 13",
        "train_0013.png",
        "decoded",
    )


@pytest.mark.parametrize(
    "bad, expected", [(np.zeros((9, 8, 3)), "(9, 8, 3)"), (np.zeros((8, 8)), "(8, 8, 1)")]
)
def test_mixed_shapes(tiny_dataset, bad, expected):
    Image.fromarray(bad.astype(np.uint8)).save(_image_path(tiny_dataset, 11))
    split = _train(tiny_dataset)
    raises_one_line(
        lambda: decode_all(split, num_threads=2, keep=False),
        tiny_dataset["train_groundtruth"],
        "entry 11",
        "train_0011.png",
        expected,
        "(8, 8, 3)",
    )


# ---------------------------------------------------------------- batches


def _collect(iterator):
    return [dict(batch) for batch in iterator]


def _both_modes(split):
    return decode_all(split, num_threads=2, keep=True), decode_all(split, num_threads=2, keep=False)


def test_epoch_order():
    a = epoch_order(50, seed=3, epoch=0)
    np.testing.assert_array_equal(a, epoch_order(50, seed=3, epoch=0))
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=0))


def test_steps():
    assert train_steps_per_epoch(20, 8) == 2
    assert train_steps_per_epoch(16, 8) == 2
    assert eval_steps(20, 8) == 3 and eval_steps(16, 8) == 2
    raises_one_line(lambda: train_steps_per_epoch(5, 8, manifest="gt.json"), "gt.json", "5", "8")


def test_train_batches(tiny_dataset):
    split = _train(tiny_dataset)
    kept, streamed = _both_modes(split)
    kw = dict(batch_size=8, seed=1, epoch=2, prefetch_size=2, num_threads=2)
    batches = _collect(train_batches(split, kept, **kw))
    assert len(batches) == 2  # 20 samples: the short last batch of 4 is dropped
    for b in batches:
        assert b["image"].shape == (8, 8, 8, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (8,) and b["label"].dtype == np.int32
        assert b["expert_labels"].shape == (8, 2) and b["expert_labels"].dtype == np.int32
        assert set(b) == {"image", "label", "expert_labels"}
    rows = epoch_order(20, 1, 2)[:16]
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images, kept.pixels[rows])
    assert len({im.tobytes() for im in images}) == 16  # distinct samples
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), split.labels[rows])
    np.testing.assert_array_equal(
        np.concatenate([b["expert_labels"] for b in batches]), split.expert_labels[rows]
    )
    # Decoding from disk gives the very same batches; another epoch gives others.
    for a, b in zip(batches, _collect(train_batches(split, streamed, **kw)), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = _collect(train_batches(split, kept, **{**kw, "epoch": 3}))
    assert not np.array_equal(other[0]["image"], batches[0]["image"])


def test_eval_batches(tiny_dataset):
    split = _train(tiny_dataset)
    kept, streamed = _both_modes(split)
    kw = dict(batch_size=8, prefetch_size=2, num_threads=2)
    batches = _collect(eval_batches(split, kept, **kw))
    assert len(batches) == 3
    for b in batches:
        assert b["image"].shape == (8, 8, 8, 3) and b["mask"].shape == (8,)
        assert b["mask"].dtype == np.bool_
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 20 and not mask[20:].any()
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images[mask], kept.pixels)
    assert not images[~mask].any()
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], split.labels)
    assert not np.concatenate([b["label"] for b in batches])[~mask].any()
    for a, b in zip(batches, _collect(eval_batches(split, streamed, **kw)), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("make", [train_batches, eval_batches])
def test_shards_split_each_global_batch(tiny_dataset, make):
    split = _train(tiny_dataset)
    kept, streamed = _both_modes(split)
    kw = dict(batch_size=8, prefetch_size=2, num_threads=2)
    if make is train_batches:
        kw.update(seed=0, epoch=0)
    whole = _collect(make(split, kept, **kw))
    # One process keeps pixels in memory, the other streams from disk: the modes agree.
    parts = [
        _collect(make(split, images, shard=(i, 2), **kw))
        for i, images in enumerate([kept, streamed])
    ]
    for step, batch in enumerate(whole):
        for key in batch:
            assert parts[0][step][key].shape[0] == 4
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])
    raises_one_line(lambda: make(split, kept, shard=(0, 3), **kw), "8", "3")


def test_undecodable_image_while_streaming(tiny_dataset):
    split = _train(tiny_dataset)
    streamed = decode_all(split, num_threads=2, keep=False)
    with open(split.files[6], "wb") as f:
        f.write(b"broken after the check")
    batches = eval_batches(split, streamed, batch_size=4, prefetch_size=2, num_threads=2)
    raises_one_line(lambda: _collect(batches), split.groundtruth_path, "entry 6", "train_0006.png")


def test_stopping_early_ends_the_producer(tiny_dataset):
    split = _train(tiny_dataset)
    kept = decode_all(split, num_threads=1, keep=True)
    batches = eval_batches(split, kept, batch_size=2, prefetch_size=1, num_threads=1)
    next(batches)
    batches.close()
    assert not any(t.name == "l2d-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(batches)


def test_images_that_do_not_fit_in_memory_are_streamed(tiny_dataset, monkeypatch, capsys):
    import psutil

    class Scarce:
        available = 100  # bytes: less than twice the 20 training images of 8x8x3

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Scarce)
    split = load_split(tiny_dataset["train_groundtruth"], tiny_dataset["train_experts"])
    decoded = decode_all(split, num_threads=1, keep=True)
    assert decoded.pixels is None
    assert "decoding them from disk every epoch" in capsys.readouterr().err
    streamed = next(iter(train_batches(split, decoded, batch_size=4, seed=0, epoch=0,
                                       prefetch_size=1, num_threads=1)))
    assert streamed["image"].shape == (4, 8, 8, 3)


def test_split_digest_follows_the_manifests_contents_not_their_place(tiny_dataset, tmp_path):
    split = _train(tiny_dataset)
    before = split.digest()
    moved = tmp_path / "moved"
    shutil.copytree(os.path.dirname(tiny_dataset["train_groundtruth"]), moved)
    copy = load_split(moved / os.path.basename(tiny_dataset["train_groundtruth"]),
                      [moved / os.path.basename(p) for p in tiny_dataset["train_experts"]])
    assert copy.digest() == before and len(before) == 16
    entries = load(tiny_dataset["train_experts"][0])
    entries[0]["label"] = (entries[0]["label"] + 1) % 3
    dump(tiny_dataset["train_experts"][0], entries)
    assert _train(tiny_dataset).digest() != before
