"""A small convolutional classifier: three conv-BN-ReLU layers, global average pool, Dense head.

Meant for small images (MNIST/CIFAR-sized) and for fast tests; it has no downsampling, so its
cost grows with H*W, but at width 32 it holds only about 20k parameters.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class CNN(nnx.Module):
    """Three 3x3 conv layers (stride 1, 'SAME', ``width`` channels), each then BatchNorm and ReLU.

    Input ``[B, H, W, C]`` float32 (NHWC) of ``image_shape`` (H, W, C); output logits
    ``[B, num_outputs]`` float32.
    BatchNorm uses batch statistics after ``model.train()`` (the state at construction) and
    running averages after ``model.eval()``.

    ``dtype`` is the compute dtype of every layer; parameters are always stored in float32 so
    that optimizer updates keep full precision when computing in bfloat16.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        num_outputs: int,
        width: int = 32,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        layer_args = dict(dtype=dtype, param_dtype=jnp.float32)
        channels = (image_shape[-1], width, width, width)
        # No conv bias: the BatchNorm right after subtracts the mean, so a bias would be a
        # parameter with no effect (its own bias takes that role).
        self.convs = nnx.List(
            [
                nnx.Conv(c_in, c_out, (3, 3), strides=1, padding="SAME", use_bias=False,
                         rngs=rngs, **layer_args)
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ]
        )
        self.norms = nnx.List(
            [
                # Running statistics: 0.9 * old + 0.1 * batch (the original used 0.99).
                nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs, **layer_args)
                for _ in range(3)
            ]
        )
        self.head = nnx.Linear(width, num_outputs, rngs=rngs, **layer_args)

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C]
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.relu(norm(conv(x)))  # [B, H, W, width]
        x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, width]
        # Losses and softmax run in float32 whatever the compute dtype.
        return self.head(x).astype(jnp.float32)  # [B, num_outputs]
