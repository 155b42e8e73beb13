"""The splits of a run (training, test and, when asked for, validation), validated against each
other before any training work starts."""

import dataclasses
import functools

import numpy as np

from l2d.config import DataOptions, RuntimeOptions
from l2d.data.images import DecodedImages, decode_all
from l2d.data.manifest import SplitRecords, check_labels, infer_num_classes, load_split
from l2d.data.validation import hold_out
from l2d.errors import L2DError


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: SplitRecords
    test: SplitRecords
    train_images: DecodedImages
    test_images: DecodedImages
    num_classes: int
    # The validation split (``l2d.data.validation``), or None.
    val: SplitRecords | None = None
    val_images: DecodedImages | None = None

    @property
    def num_experts(self) -> int:
        return self.train.num_experts

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train_images.shape

    def normalisation(self, norm_mean, norm_std) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std): ``--norm-mean`` and ``--norm-std`` when given, else the
        training set's statistics."""
        channels = self.image_shape[-1]
        if norm_mean is None:
            return self.train_images.channel_mean, self.train_images.channel_std
        if len(norm_mean) != channels:
            raise L2DError(
                f"--norm-mean={','.join(map(str, norm_mean))}: {len(norm_mean)} "
                f"values, but the images of {self.train.groundtruth_path} have {channels} channels")
        return np.asarray(norm_mean, np.float32), np.asarray(norm_std, np.float32)


def load_test_split(data: DataOptions, runtime: RuntimeOptions, num_classes: int, *,
                    allow_missing: bool) -> tuple[SplitRecords, DecodedImages]:
    """The test manifests of a run whose number of classes is known, checked and decoded."""
    test = load_split(data.test_groundtruth_file, data.test_files, allow_missing=allow_missing)
    check_labels(test, num_classes)
    return test, decode_all(test, num_threads=runtime.num_threads, keep=runtime.cache_images)


def load_dataset(data: DataOptions, runtime: RuntimeOptions, *, seed: int,
                 allow_missing: bool) -> Dataset:
    """Read, align and check every manifest of every split, hold out the validation split
    (drawn from ``seed``) if asked to, then decode every image once; ``allow_missing``: expert
    manifests may lack annotations."""
    train = load_split(data.train_groundtruth_file, data.train_files,
                       allow_missing=allow_missing)
    num_classes = infer_num_classes(train, data.num_classes)
    check_labels(train, num_classes)
    val = None
    if data.val_fraction:
        train, val = hold_out(train, data.val_fraction, seed)
    elif data.val_groundtruth_file:
        val = load_split(data.val_groundtruth_file, data.val_files, allow_missing=allow_missing)
        check_labels(val, num_classes)
    decode = functools.partial(decode_all, num_threads=runtime.num_threads,
                               keep=runtime.cache_images)
    train_images = decode(train)
    test, test_images = load_test_split(data, runtime, num_classes, allow_missing=allow_missing)
    val_images = decode(val) if val is not None else None
    for split, images in ((test, test_images), (val, val_images)):
        if images is not None and images.shape != train_images.shape:
            raise L2DError(
                f"{split.groundtruth_path}: images are {images.shape} (HxWxC) but those of "
                f"{train.groundtruth_path} are {train_images.shape}")
    return Dataset(train, test, train_images, test_images, num_classes, val, val_images)
