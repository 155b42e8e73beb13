"""What each built-in method declares without JAX: its own options and its training
measurements (MLflow metric name -> plot title).

They live apart from the methods' code (``em.py``, ``one_network.py``), which imports JAX, because
the CLI builds ``--help`` and checks flags without importing JAX; the registry
(``l2d/methods/__init__.py``) pairs each method with them.
"""

import dataclasses
from typing import ClassVar

from l2d.errors import L2DError
from l2d.options import ON_TEST, MethodOptions, check_at_least, flag_of, invalid, option

# The networks a method's options can name (``l2d.models.MODELS``) and their default widths.
MODEL_NAMES = ("cnn", "preact_resnet10")
WIDTH_HELP = "(default: cnn 32 channels, preact_resnet10 64)"

# Every method reports this training measurement (``l2d.methods.base.training_coverage``).
TRAIN_COVERAGE = "coverage/train"
TRAIN_COVERAGE_DESCRIPTION = (
    "Training coverage (training-mode network on the training batches, augmented if --augment)")

# EM's training measurements.
CLF_LOSS = "loss/clf"
GATE_LOSS = "loss/dfr"
ANNOTATION_LOSS = "loss/annotation"  # Only with --missing model.
EM_MEASUREMENTS = {
    CLF_LOSS: "Classifier loss (training)",
    GATE_LOSS: "Gating (deferral) loss (training)",
    ANNOTATION_LOSS: "Annotation network loss (training, --missing model)",
    TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
}
# The surrogate methods' training measurements.
SURROGATE_LOSS = "loss/surrogate"
SURROGATE_MEASUREMENTS = {
    SURROGATE_LOSS: "Surrogate loss (training)",
    TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
}


@dataclasses.dataclass(frozen=True)
class EMOptions(MethodOptions):
    """EM's networks, E-step, classifier weighting and missing annotations."""

    # The (model, width) options of the networks every EM run trains.
    networks: ClassVar = (("clf_model", "clf_width"), ("dfr_model", "dfr_width"))

    clf_model: str = option("cnn", "the classifier network", choices=MODEL_NAMES)
    clf_width: int | None = option(None, f"the classifier's width {WIDTH_HELP}")
    dfr_model: str = option("preact_resnet10", "the gating (deferral) network",
                            choices=MODEL_NAMES)
    dfr_width: int | None = option(None, f"the gating network's width {WIDTH_HELP}")
    e_step: str = option("exact", "the E-step's posterior: exact, or Monte Carlo samples",
                         choices=("exact", "mc"))
    mc_samples: int = option(8, "samples of z per input for --e-step mc")
    expert_smoothing: float = option(
        0.0, "label smoothing eps of the experts' annotations in p(y | z = expert); 0 trusts "
        "them fully")
    clf_weighting: str = option(
        "posterior", "the classifier loss's weights: q(classifier), as in the original, or 1 "
        "for every input", choices=("posterior", "uniform"))
    allow_missing_annotations: bool = option(
        False, "expert manifests may omit files or give \"label\": null", changes=ON_TEST)
    missing: str = option(
        "exclude", "a missing annotation leaves the expert out of that input (exclude) or is "
        "predicted by an annotation network (model)", choices=("exclude", "model"))
    ann_model: str = option("cnn", "--missing model: the annotation network p(t_k | x)",
                            choices=MODEL_NAMES)
    ann_width: int | None = option(None, f"--missing model: its width {WIDTH_HELP}")

    def validate(self) -> None:
        self.check_choices()
        check_at_least(self, ("clf_width", "dfr_width", "ann_width", "mc_samples"), 1)
        if not 0 <= self.expert_smoothing <= 1:
            raise invalid("expert_smoothing", self.expert_smoothing, "must be in [0, 1]")
        if self.missing == "model" and not self.allow_missing_annotations:
            raise invalid("missing", self.missing, "only with --allow-missing-annotations")

    def check_given(self, given: set[str]) -> None:
        if "missing" in given and not self.allow_missing_annotations:
            raise invalid("missing", self.missing, "only with --allow-missing-annotations")
        for name in ("ann_model", "ann_width"):
            if name in given and self.missing != "model":
                raise L2DError(f"{flag_of(name)}: only used with --missing model")

    def allows_missing_annotations(self) -> bool:
        return self.allow_missing_annotations


@dataclasses.dataclass(frozen=True)
class OneNetworkOptions(MethodOptions):
    """The one network of the surrogate methods (C + K outputs)."""

    networks: ClassVar = (("model", "width"),)

    model: str = option("preact_resnet10", "the network", choices=MODEL_NAMES)
    width: int | None = option(None, f"its base width {WIDTH_HELP}")

    def validate(self) -> None:
        self.check_choices()
        check_at_least(self, ("width",), 1)
