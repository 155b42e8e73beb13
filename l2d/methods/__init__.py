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
    CONFIDENCE_MEASUREMENTS,
    EM_MEASUREMENTS,
    SELECTIVE_MEASUREMENTS,
    SURROGATE_MEASUREMENTS,
    TWO_STAGE_MEASUREMENTS,
    ClassifierOptions,
    ConfidenceOptions,
    EMOptions,
    OneNetworkOptions,
    RealizableSurrogateOptions,
    TwoStageOptions,
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
    Registered("rs", "one network with C + K outputs, the realizable surrogate",
               RealizableSurrogateOptions, SURROGATE_MEASUREMENTS,
               "l2d.methods.realizable_surrogate:RealizableSurrogate"),
    Registered("asm", "one network with C + K outputs, the asymmetric softmax",
               OneNetworkOptions, SURROGATE_MEASUREMENTS,
               "l2d.methods.asymmetric_softmax:AsymmetricSoftmax"),
    Registered("confidence", "a classifier and a network of each expert's P(right), compared",
               ConfidenceOptions, CONFIDENCE_MEASUREMENTS,
               "l2d.methods.confidence:ConfidenceComparison"),
    Registered("two_stage", "a classifier (or an earlier run's, frozen), then a rejector over "
               "K + 1 options trained on their costs", TwoStageOptions, TWO_STAGE_MEASUREMENTS,
               "l2d.methods.two_stage:TwoStage"),
    Registered("selective", "a classifier alone; its least confident inputs go to the expert "
               "best in training", ClassifierOptions, SELECTIVE_MEASUREMENTS,
               "l2d.methods.selective:Selective"),
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
