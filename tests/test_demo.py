"""The built-in digits demo dataset: complete, valid manifests and experts as documented."""

import numpy as np
import pytest

from l2d.data.demo import SPECIALTIES, build_demo_dataset, demo_manifests
from l2d.data.manifest import check_labels, infer_num_classes, load_split
from l2d.errors import L2DError


def test_demo_dataset_is_valid_and_its_experts_are_specialists(tmp_path):
    assert demo_manifests(tmp_path, seed=0) is None
    manifests = build_demo_dataset(tmp_path, seed=0)
    assert demo_manifests(tmp_path, seed=0) == manifests
    with pytest.raises(L2DError, match="built with seed 0, not 1"):
        demo_manifests(tmp_path, seed=1)
    train = load_split(manifests["train_groundtruth"], manifests["train_experts"])
    test = load_split(manifests["test_groundtruth"], manifests["test_experts"])
    assert train.num_samples + test.num_samples == 1797
    assert abs(test.num_samples / 1797 - 0.2) < 0.01
    assert not set(train.files) & set(test.files)
    assert infer_num_classes(train, None) == 10
    check_labels(test, 10)
    for split in (train, test):
        for k, specialty in enumerate(SPECIALTIES):
            inside = np.isin(split.labels, specialty)
            right = split.expert_labels[:, k] == split.labels
            assert right[inside].all()
            # Uniform answers over 10 classes elsewhere: right 10% of the time.
            assert abs(right[~inside].mean() - 0.1) < 0.05


def test_demo_dataset_is_deterministic(tmp_path):
    first = build_demo_dataset(tmp_path / "a", seed=3)
    second = build_demo_dataset(tmp_path / "b", seed=3)
    for key in ("train_experts", "test_experts"):
        for a, b in zip(first[key], second[key]):
            assert open(a).read() == open(b).read()
