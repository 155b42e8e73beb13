"""The method registry: ``--method`` name -> implementation (see ``l2d/methods/base.py``).

Adding a method: one new module with a class that fulfils ``Method`` and has
``from_config(config, *, in_channels, num_classes, num_experts)``, and one line below. Its own
flags, if any, go into ``TrainConfig`` and ``METHOD_FIELDS`` in ``l2d/config.py``.
"""

from l2d.methods.base import Method
from l2d.methods.em import EM
from l2d.methods.ova import OneVsAll
from l2d.methods.softmax import Softmax

METHODS = {method.name: method for method in (EM, Softmax, OneVsAll)}


def make_method(config, *, in_channels: int, num_classes: int, num_experts: int) -> Method:
    """The method ``config.method`` names, for images of ``in_channels`` channels."""
    return METHODS[config.method].from_config(config, in_channels=in_channels,
                                              num_classes=num_classes, num_experts=num_experts)


__all__ = ["METHODS", "Method", "make_method"]
