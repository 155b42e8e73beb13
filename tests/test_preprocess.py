"""On-device normalisation and augmentation."""

import jax
import numpy as np

from l2d.preprocess import AUGMENT_PAD, augment, normalise


def test_normalise_matches_numpy():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
    np.testing.assert_allclose(normalise(images, mean, std), (images / 255 - mean) / std,
                               rtol=1e-5, atol=1e-5)


def test_augment_is_a_padded_crop_or_its_mirror_and_depends_on_the_key():
    images = np.random.default_rng(1).integers(1, 256, (16, 6, 6, 2), dtype=np.uint8)
    out = np.asarray(augment(jax.random.key(0), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (AUGMENT_PAD,) * 2, (AUGMENT_PAD,) * 2, (0, 0)))
    size = 2 * AUGMENT_PAD + 1
    flipped = 0
    for image, result in zip(padded, out):
        crops = [image[y:y + 6, x:x + 6] for y in range(size) for x in range(size)]
        plain = any(np.array_equal(result, c) for c in crops)
        mirrored = any(np.array_equal(result, c[:, ::-1]) for c in crops)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 0 < flipped < len(images)  # Some flipped, some not.
    np.testing.assert_array_equal(out, augment(jax.random.key(0), images))
    assert not np.array_equal(out, augment(jax.random.key(1), images))
