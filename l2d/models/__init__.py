"""Model registry: a name -> constructor map and ``build_model``, the one way the rest of l2d
builds a network (classifier or gate), so CLI names are validated in one place.

Every model is built for images of one shape (H, W, C), maps float32 NHWC images
``[B, H, W, C]`` to float32 logits ``[B, num_outputs]`` and switches BatchNorm (where it has any)
between batch and running statistics with ``model.train()`` / ``model.eval()``.
"""

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from l2d.errors import L2DError
from l2d.models.cnn import CNN
from l2d.models.netsimple import NetSimple, pooled_size
from l2d.models.preact_resnet import PreActResNet, preact_resnet10

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "cnn": CNN,
    "netsimple": NetSimple,
    "preact_resnet10": preact_resnet10,
}

DEFAULT_WIDTHS: dict[str, int] = {"cnn": 32, "netsimple": 50, "preact_resnet10": 64}


def build_model(
    name: str,
    *,
    image_shape: tuple[int, int, int],
    num_outputs: int,
    width: int | None,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Module:
    """Build the model registered as ``name`` for images of ``image_shape`` (H, W, C);
    ``width=None`` takes ``DEFAULT_WIDTHS[name]``.

    ``dtype`` is the compute dtype; parameters are float32 either way. Raises ``L2DError`` for an
    unknown name, a non-positive width, channel count or output count, or images too small for
    ``netsimple``'s unpadded convolutions.
    """
    if name not in MODELS:
        raise L2DError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if width is None:
        width = DEFAULT_WIDTHS[name]
    for field, value in (("width", width), ("image channels", image_shape[-1]),
                         ("num_outputs", num_outputs)):
        if value < 1:
            raise L2DError(f"model {name!r}: {field} must be >= 1, got {value}")
    if name == "netsimple" and min(pooled_size(size) for size in image_shape[:2]) < 1:
        raise L2DError(f"model 'netsimple': images of {image_shape[0]}x{image_shape[1]} are too "
                       "small for its two unpadded 5x5 convolutions and poolings (16x16 at least)")
    return MODELS[name](image_shape=tuple(image_shape), num_outputs=num_outputs, width=width,
                        dtype=dtype, rngs=rngs)


__all__ = ["CNN", "DEFAULT_WIDTHS", "MODELS", "NetSimple", "PreActResNet", "build_model",
           "preact_resnet10"]
