"""Image preprocessing on the device, inside the jitted steps.

Batches arrive as raw uint8 (4x less host-to-device traffic than float32). Augmentation draws
from a JAX key derived from the seed and the global step, so it is identical however many loader
threads run and never repeats from one epoch to the next.
"""

import jax
import jax.numpy as jnp

AUGMENT_PAD = 4


def channel_statistics(mean, std) -> tuple[jax.Array, jax.Array]:
    """The per-channel (mean, std) of a run's normalisation (``--norm-mean``, ``--norm-std``
    or the training set's, as its configuration records them) as float32 arrays."""
    return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)


def normalise(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, C]`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Pad 4 pixels with zeros, crop back to ``[H, W]`` at a random offset, flip half the images."""
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (AUGMENT_PAD,) * 2, (AUGMENT_PAD,) * 2, (0, 0)))
    key_y, key_x, key_flip = jax.random.split(key, 3)
    offset_y = jax.random.randint(key_y, (batch,), 0, 2 * AUGMENT_PAD + 1)
    offset_x = jax.random.randint(key_x, (batch,), 0, 2 * AUGMENT_PAD + 1)

    def crop(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels))

    cropped = jax.vmap(crop)(padded, offset_y, offset_x)
    flip = jax.random.bernoulli(key_flip, 0.5, (batch, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)
