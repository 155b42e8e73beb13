"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

CIFAR-style: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep full resolution in the
first stage. Four stages of widths ``width * (1, 2, 4, 8)`` with strides ``(1, 2, 2, 2)``.
Named depths are one-line partials of the generic ``PreActResNet``.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)
STAGE_STRIDES = (1, 2, 2, 2)
# One pixel on every side for every 3x3 convolution, as in the original network. "SAME" would
# pad a stride-2 convolution of an even-sized input on the bottom/right only, so its outputs
# would be centred one pixel away from the pixels the stride-2 1x1 shortcut reads.
PAD_3X3 = ((1, 1), (1, 1))
# BatchNorm keeps running statistics as 0.9 * old + 0.1 * batch (the original used 0.99).
BN_MOMENTUM = 0.9


class PreActBlock(nnx.Module):
    """Basic pre-activation block: ``a = relu(bn1(x))``, ``out = conv2(relu(bn2(conv1(a)))) + s``.

    Both convolutions take pre-activated inputs; in particular conv1 reads ``a``, not ``x``
    (the original implementation fed ``x`` to conv1, which left bn1 without effect on an
    identity block). The shortcut ``s`` is a 1x1 projection of ``a`` when the shape changes, as
    in the paper; otherwise it is ``x`` itself, so the residual path stays a clean identity.

    Input ``[B, H, W, in_channels]``; output ``[B, H / stride, W / stride, out_channels]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        layer_args = dict(dtype=dtype, param_dtype=jnp.float32)
        bn_args = dict(momentum=BN_MOMENTUM, epsilon=1e-5, **layer_args)
        # No conv biases anywhere: every conv output reaches a BatchNorm (directly, or through
        # the residual sum) that removes any constant offset.
        self.bn1 = nnx.BatchNorm(in_channels, rngs=rngs, **bn_args)
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), strides=stride, padding=PAD_3X3,
                              use_bias=False, rngs=rngs, **layer_args)
        self.bn2 = nnx.BatchNorm(out_channels, rngs=rngs, **bn_args)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), strides=1, padding=PAD_3X3,
                              use_bias=False, rngs=rngs, **layer_args)
        if stride != 1 or in_channels != out_channels:
            # Reads pixels (0, 0), (s, s), ...: the centres of conv1's windows.
            self.shortcut = nnx.Conv(in_channels, out_channels, (1, 1), strides=stride,
                                     padding="VALID", use_bias=False, rngs=rngs, **layer_args)
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C_in]
        a = nnx.relu(self.bn1(x))  # [B, H, W, C_in]
        h = self.conv1(a)  # [B, H/s, W/s, C_out]
        h = self.conv2(nnx.relu(self.bn2(h)))  # [B, H/s, W/s, C_out]
        shortcut = x if self.shortcut is None else self.shortcut(a)  # [B, H/s, W/s, C_out]
        return h + shortcut


class PreActResNet(nnx.Module):
    """Generic pre-activation ResNet with ``len(blocks_per_stage) == 4`` stages.

    Input ``[B, H, W, C]`` float32 (NHWC) of ``image_shape`` (H, W, C); output logits
    ``[B, num_outputs]`` float32. The blocks hand un-normalised residual sums to each other, so a
    final BatchNorm + ReLU precedes the pooling. ``dtype`` is the compute dtype; parameters stay
    float32.
    """

    def __init__(
        self,
        *,
        image_shape: tuple[int, int, int],
        num_outputs: int,
        blocks_per_stage: Sequence[int],
        width: int = 64,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(blocks_per_stage) != len(STAGE_STRIDES):
            raise ValueError(
                f"blocks_per_stage needs {len(STAGE_STRIDES)} entries, "
                f"got {tuple(blocks_per_stage)}"
            )
        layer_args = dict(dtype=dtype, param_dtype=jnp.float32)
        # Stem: no BN/ReLU here, the first block pre-activates its input itself.
        self.stem = nnx.Conv(image_shape[-1], width, (3, 3), strides=1, padding=PAD_3X3,
                             use_bias=False, rngs=rngs, **layer_args)
        blocks = []
        channels = width
        for multiplier, stride, num_blocks in zip(STAGE_WIDTH_MULTIPLIERS, STAGE_STRIDES,
                                                  blocks_per_stage):
            out_channels = width * multiplier
            for i in range(num_blocks):
                # Only the first block of a stage downsamples and widens.
                blocks.append(PreActBlock(channels, out_channels, stride=stride if i == 0 else 1,
                                          dtype=dtype, rngs=rngs))
                channels = out_channels
        self.blocks = nnx.List(blocks)
        self.final_norm = nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=1e-5, rngs=rngs,
                                        **layer_args)
        self.head = nnx.Linear(channels, num_outputs, rngs=rngs, **layer_args)

    def __call__(self, x: jax.Array) -> jax.Array:
        # x: [B, H, W, C]
        x = self.stem(x)  # [B, H, W, width]
        for block in self.blocks:
            x = block(x)  # ends at [B, H/8, W/8, 8 * width]
        x = nnx.relu(self.final_norm(x))
        x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, 8 * width]
        # Losses and softmax run in float32 whatever the compute dtype.
        return self.head(x).astype(jnp.float32)  # [B, num_outputs]


# PreAct-ResNet-10: stem + 4 blocks x 2 convs + head = 10 weight layers.
preact_resnet10 = functools.partial(PreActResNet, blocks_per_stage=(1, 1, 1, 1))
