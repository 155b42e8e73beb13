"""Both splits of a run, validated against each other before any training work starts."""

import dataclasses

import numpy as np

from l2d.config import TrainConfig
from l2d.data.images import DecodedImages, decode_all
from l2d.data.manifest import SplitRecords, check_labels, infer_num_classes, load_split
from l2d.errors import L2DError


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: SplitRecords
    test: SplitRecords
    train_images: DecodedImages
    test_images: DecodedImages
    num_classes: int

    @property
    def num_experts(self) -> int:
        return self.train.num_experts

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train_images.shape

    def normalisation(self, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std): the flags when given, else the training set's statistics."""
        channels = self.image_shape[-1]
        if config.norm_mean is None:
            return self.train_images.channel_mean, self.train_images.channel_std
        if len(config.norm_mean) != channels:
            raise L2DError(
                f"--norm-mean={','.join(map(str, config.norm_mean))}: {len(config.norm_mean)} "
                f"values, but the images of {self.train.groundtruth_path} have {channels} channels")
        return (np.asarray(config.norm_mean, np.float32), np.asarray(config.norm_std, np.float32))


def load_test_split(config: TrainConfig, num_classes: int) -> tuple[SplitRecords, DecodedImages]:
    """The test manifests of a run whose number of classes is known, checked and decoded."""
    test = load_split(config.test_groundtruth_file, config.test_files,
                      allow_missing=config.allow_missing_annotations)
    check_labels(test, num_classes)
    return test, decode_all(test, num_threads=config.num_threads, keep=config.cache_images)


def load_dataset(config: TrainConfig) -> Dataset:
    """Read, align and check every manifest of both splits, then decode every image once."""
    train = load_split(config.train_groundtruth_file, config.train_files,
                       allow_missing=config.allow_missing_annotations)
    num_classes = infer_num_classes(train, config.num_classes)
    check_labels(train, num_classes)
    train_images = decode_all(train, num_threads=config.num_threads, keep=config.cache_images)
    test, test_images = load_test_split(config, num_classes)
    if train_images.shape != test_images.shape:
        raise L2DError(
            f"{test.groundtruth_path}: images are {test_images.shape} (HxWxC) but those of "
            f"{train.groundtruth_path} are {train_images.shape}")
    return Dataset(train, test, train_images, test_images, num_classes)
