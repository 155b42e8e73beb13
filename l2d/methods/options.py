"""What each built-in method declares without JAX: its own options and its training
measurements (MLflow metric name -> plot title).

They live apart from the methods' code (``em.py``, ``one_network.py``), which imports JAX, because
the CLI builds ``--help`` and checks flags without importing JAX; the registry
(``l2d/methods/__init__.py``) pairs each method with them.
"""

import dataclasses
import json
from typing import ClassVar

from l2d.errors import L2DError
from l2d.options import (
    MethodOptions,
    check_at_least,
    derived,
    flag_of,
    invalid,
    option,
    shown,
)

# The networks a method's options can name (``l2d.models.MODELS``) and their default widths.
MODEL_NAMES = ("cnn", "netsimple", "preact_resnet10")
WIDTH_HELP = "(default: cnn 32 channels, netsimple 50, preact_resnet10 64)"

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
# The baselines that train a classifier by cross-entropy (CLF_LOSS) beside another network.
EXPERT_MODEL_LOSS = "loss/experts_right"
REJECTOR_LOSS = "loss/rejector"
CONFIDENCE_MEASUREMENTS = {
    CLF_LOSS: "Classifier cross-entropy (training)",
    EXPERT_MODEL_LOSS: "Expert network's logistic loss of 'expert k is right' (training)",
    TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
}
TWO_STAGE_MEASUREMENTS = {
    CLF_LOSS: "Classifier cross-entropy (training; not with --classifier-run)",
    REJECTOR_LOSS: "Rejector's cost-sensitive loss (training)",
    TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
}
SELECTIVE_MEASUREMENTS = {
    CLF_LOSS: "Classifier cross-entropy (training)",
    TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
}


@dataclasses.dataclass(frozen=True)
class ClassifierOptions(MethodOptions):
    """The classifier network of the methods that train one apart from their other networks."""

    networks: ClassVar = (("clf_model", "clf_width"),)

    clf_model: str = option("cnn", "the classifier network", choices=MODEL_NAMES)
    clf_width: int | None = option(None, f"the classifier's width {WIDTH_HELP}")

    def validate(self) -> None:
        self.check_choices()
        check_at_least(self, ("clf_width",), 1)


@dataclasses.dataclass(frozen=True)
class EMOptions(ClassifierOptions):
    """EM's networks, E-step, classifier weighting and how it treats missing annotations."""

    # The (model, width) options of the networks every EM run trains.
    networks: ClassVar = (("clf_model", "clf_width"), ("dfr_model", "dfr_width"))

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


@dataclasses.dataclass(frozen=True)
class OneNetworkOptions(MethodOptions):
    """The one network of the surrogate methods (C + K outputs)."""

    networks: ClassVar = (("model", "width"),)

    model: str = option("preact_resnet10", "the network", choices=MODEL_NAMES)
    width: int | None = option(None, f"its base width {WIDTH_HELP}")

    def validate(self) -> None:
        self.check_choices()
        check_at_least(self, ("width",), 1)


@dataclasses.dataclass(frozen=True)
class RealizableSurrogateOptions(OneNetworkOptions):
    """The realizable surrogate's mixing weight."""

    rs_alpha: float = option(
        1.0, "alpha of the realizable surrogate: alpha x its deferral term + (1 - alpha) x the "
        "classifier's cross-entropy")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.rs_alpha <= 1:
            raise invalid("rs_alpha", self.rs_alpha, "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ConfidenceOptions(ClassifierOptions):
    """Confidence comparison: the classifier and the network of the experts' P(right)."""

    networks: ClassVar = (("clf_model", "clf_width"), ("expert_model", "expert_width"))

    expert_model: str = option("preact_resnet10", "the network estimating each expert's "
                               "P(right | x) (K logistic outputs)", choices=MODEL_NAMES)
    expert_width: int | None = option(None, f"its width {WIDTH_HELP}")

    def validate(self) -> None:
        super().validate()
        check_at_least(self, ("expert_width",), 1)


@dataclasses.dataclass(frozen=True)
class TwoStageOptions(ClassifierOptions):
    """Two-stage deferral: a classifier (trained here, or an earlier run's, frozen) and the
    rejector trained on its costs."""

    networks: ClassVar = (("clf_model", "clf_width"), ("rejector_model", "rejector_width"))

    rejector_model: str = option("preact_resnet10", "the rejector network (K + 1 outputs: the "
                                 "experts, then the classifier)", choices=MODEL_NAMES)
    rejector_width: int | None = option(None, f"its width {WIDTH_HELP}")
    classifier_run: str | None = option(
        None, "take the classifier, frozen, from this earlier l2d run (same store and artifact "
        "folder, same classes and image shape), instead of training one", metavar="RUN_ID")
    # With --classifier-run: that run's method, its options (JSON) and its number of experts,
    # recorded when this run starts, so that its classifier is rebuilt without that run.
    classifier_method: str | None = derived()
    classifier_options: str | None = derived()
    classifier_experts: int | None = derived()

    def validate(self) -> None:
        super().validate()
        check_at_least(self, ("rejector_width",), 1)

    def resolved(self, config, stored_config_of) -> dict:
        """With --classifier-run, once: that run's method, options and number of experts, and
        its normalisation, which its classifier was trained with (the rejector adopts it)."""
        if self.classifier_run is None or self.classifier_method is not None:
            return {}
        flag = f"{flag_of('classifier_run')}={self.classifier_run}"
        source = stored_config_of(self.classifier_run, flag_of('classifier_run'))
        data = config.data
        for name in ("num_classes", "image_shape"):
            theirs, ours = getattr(source.data, name), getattr(data, name)
            if theirs != ours:
                raise L2DError(f"{flag}: that run has {name} {shown(theirs)}, this data "
                               f"{shown(ours)}")
        for name in ("norm_mean", "norm_std"):
            given, theirs = getattr(data, name), getattr(source.data, name)
            if given is not None and tuple(given) != tuple(theirs):
                raise L2DError(f"{flag_of(name)}={shown(given)}: the classifier of "
                               f"{flag} was trained with {shown(theirs)}; omit the flag")
        return {"classifier_method": source.method,
                "classifier_options": json.dumps(source.method_options.values()),
                "classifier_experts": source.data.num_experts,
                "norm_mean": source.data.norm_mean, "norm_std": source.data.norm_std}

    def check_given(self, given: set[str]) -> None:
        if self.classifier_run is not None:
            for name in ("clf_model", "clf_width"):
                if name in given:
                    raise L2DError(f"{flag_of(name)}: not with --classifier-run, whose run "
                                   "brings its own classifier")
