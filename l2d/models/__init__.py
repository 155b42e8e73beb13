"""Model registry: a name -> constructor map and ``build_model``, the one way the rest of l2d
builds a network (classifier or gate), so CLI names are validated in one place.

Every model maps float32 NHWC images ``[B, H, W, C]`` to float32 logits ``[B, num_outputs]`` and
switches BatchNorm between batch and running statistics with ``model.train()`` / ``model.eval()``.
"""

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from l2d.errors import L2DError
from l2d.models.cnn import CNN
from l2d.models.preact_resnet import PreActResNet, preact_resnet10

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "cnn": CNN,
    "preact_resnet10": preact_resnet10,
}

DEFAULT_WIDTHS: dict[str, int] = {"cnn": 32, "preact_resnet10": 64}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_outputs: int,
    width: int | None,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Module:
    """Build the model registered as ``name``; ``width=None`` takes ``DEFAULT_WIDTHS[name]``.

    ``dtype`` is the compute dtype; parameters are float32 either way. Raises ``L2DError`` for an
    unknown name or a non-positive width, channel count or output count.
    """
    if name not in MODELS:
        raise L2DError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if width is None:
        width = DEFAULT_WIDTHS[name]
    for field, value in (("width", width), ("in_channels", in_channels),
                         ("num_outputs", num_outputs)):
        if value < 1:
            raise L2DError(f"model {name!r}: {field} must be >= 1, got {value}")
    return MODELS[name](in_channels=in_channels, num_outputs=num_outputs, width=width,
                        dtype=dtype, rngs=rngs)


__all__ = ["CNN", "DEFAULT_WIDTHS", "MODELS", "PreActResNet", "build_model", "preact_resnet10"]
