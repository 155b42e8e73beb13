"""The method registry: ``--method`` name -> the method's options, measurements and code.

Importing this package imports no JAX: an entry names its implementation as ``"module:Class"``
(imported by ``implementation()`` when a run needs it) and carries what the CLI, the docs and
the plots read without running the method. The interface a method implements is
``l2d.methods.base.Method``.

Adding a method: one module with its ``Method`` class (its options, a frozen dataclass of
``l2d.options.option`` fields subclassing ``MethodOptions``, beside it in ``options.py`` for a
built-in method, as the CLI reads them without JAX), and one line in ``METHODS`` below.
"""

import dataclasses
import importlib
from collections.abc import Mapping

from l2d.errors import L2DError
from l2d.methods.options import (
    EM_MEASUREMENTS,
    SURROGATE_MEASUREMENTS,
    EMOptions,
    OneNetworkOptions,
)
from l2d.options import MethodOptions


@dataclasses.dataclass(frozen=True)
class Registered:
    """A method as the registry knows it."""

    name: str
    summary: str  # One line for --help and the docs.
    options: type[MethodOptions]
    # Training measurements the method may report: MLflow metric name -> plot title.
    measurements: Mapping[str, str]
    # ``"module:Class"``, imported when needed, or the class itself.
    code: str | type
    # Whether training reads the workload bounds (EM's E-step); other methods only route by
    # them, with --test-workload enforce.
    trains_with_share_bounds: bool = False

    def implementation(self) -> type:
        if not isinstance(self.code, str):
            return self.code
        module, name = self.code.split(":")
        return getattr(importlib.import_module(module), name)


METHODS: dict[str, Registered] = {entry.name: entry for entry in (
    Registered("em", "classifier + gate over K experts and the classifier, trained by EM",
               EMOptions, EM_MEASUREMENTS, "l2d.methods.em:EM", trains_with_share_bounds=True),
    Registered("softmax", "one network with C + K outputs, the multi-expert softmax surrogate",
               OneNetworkOptions, SURROGATE_MEASUREMENTS, "l2d.methods.softmax:Softmax"),
    Registered("ova", "one network with C + K outputs, the one-vs-all surrogate",
               OneNetworkOptions, SURROGATE_MEASUREMENTS, "l2d.methods.ova:OneVsAll"),
)}


def registered(name: str) -> Registered:
    """The registry's entry of ``name``; L2DError naming the methods there are otherwise."""
    if name not in METHODS:
        raise L2DError(f"--method={name}: unknown method; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, options: MethodOptions, problem):
    """The method ``name`` with its ``options`` for ``problem`` (``l2d.methods.base.Problem``:
    image channels, classes, experts, compute dtype and workload bounds)."""
    return registered(name).implementation()(options, problem)


__all__ = ["METHODS", "Registered", "make_method", "registered"]
