"""NetSimple, the small CNN of the CIFAR-K benchmark (Mozannar et al., AISTATS 2023): two 5x5
convolutions, each then ReLU and 2x2 max-pooling, then three dense layers.

The layers, widths and activations are those of the benchmark's ``networks/cnn.py``; the
convolutions are unpadded ("VALID"), so 32x32 images reach the dense layers as 5x5 maps. Its
initialisation draws weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default
for these layers, so that a run starts from the same distribution as the benchmark's. It has
no BatchNorm: ``train()`` and ``eval()`` change nothing.

Two formulations are XLA's fast ones on a CPU, for the same function. A convolution is one
matrix product of its 25 shifted slices (an im2col built by slicing, with the kernel in its
``[5, 5, C_in, C_out]`` layout reshaped), and a 2x2 max-pool is a max over a reshape. XLA's own
convolution spends most of the step in the first convolution's weight gradient (3 input
channels), and ``max_pool``'s gradient is a scatter. Together the two halve the training step
here: 0.49 of the ``nnx.Conv`` + ``nnx.max_pool`` step on a 2-core CPU (Results, "NetSimple
against PyTorch").
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


def shifted_slices(x: jax.Array, size: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, H - size + 1, W - size + 1, size * size * C]``: the patches of
    an unpadded ``size`` x ``size`` convolution, in (row, column, channel) order."""
    height, width = x.shape[1] - size + 1, x.shape[2] - size + 1
    return jnp.concatenate([x[:, i:i + height, j:j + width, :]
                            for i in range(size) for j in range(size)], axis=-1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, H // 2, W // 2, C]``: the max of each 2x2 window (stride 2, an
    odd last row or column dropped, as an unpadded pool does)."""
    batch, height, width, channels = x.shape
    x = x[:, :height - height % 2, :width - width % 2]
    return x.reshape(batch, height // 2, POOL, width // 2, POOL, channels).max(axis=(2, 4))


class UnpaddedConv(nnx.Module):
    """A ``KERNEL`` x ``KERNEL`` convolution without padding, computed as ``shifted_slices``
    times the kernel; parameters ``kernel`` ``[KERNEL, KERNEL, C_in, C_out]`` and ``bias``, as
    ``nnx.Conv`` names and shapes them."""

    def __init__(self, in_channels: int, out_channels: int, *, dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        init = uniform_fan_in(KERNEL * KERNEL * in_channels)
        self.kernel = nnx.Param(init(rngs.params(), (KERNEL, KERNEL, in_channels, out_channels)))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].reshape(-1, self.kernel.shape[-1]).astype(self.dtype)
        return shifted_slices(x.astype(self.dtype), KERNEL) @ kernel + self.bias[...].astype(
            self.dtype)


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

        def dense(n_in: int, n_out: int) -> nnx.Linear:
            return nnx.Linear(n_in, n_out, dtype=dtype, param_dtype=jnp.float32,
                              kernel_init=uniform_fan_in(n_in), bias_init=uniform_fan_in(n_in),
                              rngs=rngs)

        self.convs = nnx.List([UnpaddedConv(channels, width, dtype=dtype, rngs=rngs),
                               UnpaddedConv(width, width, dtype=dtype, rngs=rngs)])
        widths = (flat, *DENSE_WIDTHS, num_outputs)
        self.dense = nnx.List([dense(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C]
        for conv in self.convs:
            x = max_pool_2x2(nnx.relu(conv(x)))
        x = x.reshape(x.shape[0], -1)  # [B, h * w * width], h = w = 5 for 32x32 images
        for layer in self.dense[:-1]:
            x = nnx.relu(layer(x))
        # Losses and softmax run in float32 whatever the compute dtype.
        return self.dense[-1](x).astype(jnp.float32)  # [B, num_outputs]
