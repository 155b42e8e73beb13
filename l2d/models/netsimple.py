"""NetSimple, the small CNN of the CIFAR-K benchmark (Mozannar et al., AISTATS 2023): two 5x5
convolutions, each then ReLU and 2x2 max-pooling, then three dense layers.

The layers, widths and activations are those of the benchmark's ``networks/cnn.py``; the
convolutions are unpadded ("VALID"), so 32x32 images reach the dense layers as 5x5 maps. Its
initialisation draws weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default
for these layers, so that a run starts from the same distribution as the benchmark's. It has
no BatchNorm: ``train()`` and ``eval()`` change nothing.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

KERNEL = 5
POOL = 2
# The benchmark's widths: 50 channels in both convolutions, then dense layers of 100 and 20.
DENSE_WIDTHS = (100, 20)


def pooled_size(size: int) -> int:
    """Height (or width) of the maps after both convolutions and poolings; < 1: too small."""
    for _ in range(2):
        size = (size - KERNEL + 1) // POOL
    return size


def uniform_fan_in(fan_in: int):
    """Initializer of U(-1/sqrt(fan_in), 1/sqrt(fan_in)) of any shape."""
    bound = 1 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NetSimple(nnx.Module):
    """conv 5x5 (``width``) -> ReLU -> max-pool 2 -> conv 5x5 (``width``) -> ReLU -> max-pool 2
    -> dense 100 -> ReLU -> dense 20 -> ReLU -> dense ``num_outputs``.

    Input ``[B, H, W, C]`` float32 (NHWC) of ``image_shape`` (H, W, C), at least 16x16; output
    logits ``[B, num_outputs]`` float32. ``dtype`` is the compute dtype; parameters stay float32.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        num_outputs: int,
        width: int = 50,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        height, breadth, channels = image_shape
        flat = pooled_size(height) * pooled_size(breadth) * width

        def conv(c_in: int, c_out: int) -> nnx.Conv:
            fan_in = KERNEL * KERNEL * c_in
            return nnx.Conv(c_in, c_out, (KERNEL, KERNEL), padding="VALID", dtype=dtype,
                            param_dtype=jnp.float32, kernel_init=uniform_fan_in(fan_in),
                            bias_init=uniform_fan_in(fan_in), rngs=rngs)

        def dense(n_in: int, n_out: int) -> nnx.Linear:
            return nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=jnp.float32,
                              kernel_init=uniform_fan_in(n_in), bias_init=uniform_fan_in(n_in),
                              rngs=rngs)

        self.convs = nnx.List([conv(channels, width), conv(width, width)])
        widths = (flat, *DENSE_WIDTHS, num_outputs)
        self.dense = nnx.List([dense(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C]
        for conv in self.convs:
            x = nnx.max_pool(nnx.relu(conv(x)), (POOL, POOL), strides=(POOL, POOL))
        x = x.reshape(x.shape[0], -1)  # [B, h * w * width], h = w = 5 for 32x32 images
        for layer in self.dense[:-1]:
            x = nnx.relu(layer(x))
        # Losses and softmax run in float32 whatever the compute dtype.
        return self.dense[-1](x).astype(jnp.float32)  # [B, num_outputs]
