"""Two-stage (post-hoc) learning to defer with several experts (Mao, Mohri, Mohri & Zhong,
"Two-stage learning to defer with multiple experts", NeurIPS 2023; Narasimhan, Jitkrittum,
Menon, Rawat & Kumar, "Post-hoc estimators for learning to defer to an expert", NeurIPS 2022).

Stage 1 is a classifier h: trained in the same run by cross-entropy, or, with
``--classifier-run``, the classifier of an earlier l2d run of any method, frozen (its parameters
and BatchNorm statistics are never updated; the case of a team that already has a model).
Stage 2 is a rejector r with K + 1 outputs, the experts then the classifier, trained on the costs
of each option on the input,

    c_k = 1[t_k != y] (expert k),  c_(K+1) = 1[h(x) != y] (the classifier),

by the cost-sensitive comp-sum surrogate of Mao et al. (their eq. for the two-stage setting) with
the logistic (cross-entropy) loss:

    loss = -sum_j (sum_(i != j) c_i) log softmax(r)_j

so each option j is pushed up by the costs of the others: the rejector learns to choose an
option that is right (zero loss when every option is right, and none pushed when all are
wrong). The paper indexes the classifier first (j = 0); here it is last, as in every l2d method's
scores. Trained in one run, both stages learn at once: the rejector's costs use the classifier's
current predictions (they carry no gradient). The strict two-stage protocol trains the
classifier first (e.g. ``--method selective``) and passes its run to ``--classifier-run``.

An expert without an annotation for an input is no option for it: its cost is unknown, so it
leaves the rejector's softmax and the sums of that input, which is the loss of the options
present (the literature's code counts it as wrong, c_k = 1).

The system routes each input to the argmax of the rejector's outputs.
"""

import dataclasses
import functools
import json
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.errors import L2DError
from l2d.methods.base import (
    Decision,
    Problem,
    at_least_float32,
    available_options,
    cross_entropy,
    present,
    training_coverage,
)
from l2d.methods.options import (
    CLF_LOSS,
    REJECTOR_LOSS,
    TRAIN_COVERAGE,
    TWO_STAGE_MEASUREMENTS,
    TwoStageOptions,
)
from l2d.models import build_model


class TwoStageNetworks(nnx.Module):
    def __init__(self, classifier: nnx.Module, rejector: nnx.Module):
        # Its own network, or an earlier run's whole model (built by that run's method).
        self.classifier = classifier
        self.rejector = rejector


def option_costs(class_prediction: jax.Array, labels: jax.Array,
                 expert_labels: jax.Array) -> jax.Array:
    """``[B, K + 1]`` float32: 1 where an option is wrong (the experts, then the classifier), 0
    where an expert is absent (``rejector_loss`` leaves it out)."""
    return jnp.concatenate([present(expert_labels) & (expert_labels != labels[:, None]),
                            (class_prediction != labels)[:, None]],
                           axis=-1).astype(jnp.float32)


def rejector_loss(rejector_logits: jax.Array, costs: jax.Array,
                  available: jax.Array | None = None) -> jax.Array:
    """``[B]``: -sum_j (sum_(i != j) c_i) log softmax(r)_j, j and i over the ``available``
    options ``[B, K + 1]`` (all if None)."""
    logits = at_least_float32(rejector_logits)
    if available is not None:
        logits = jnp.where(available, logits, -jnp.inf)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if available is not None:
        # An absent option's cost is 0 and its log p (-inf) is kept out of the product.
        log_p = jnp.where(available, log_p, 0.0)
    others = jnp.sum(costs, axis=-1, keepdims=True) - costs
    return -jnp.sum(others * log_p, axis=-1)


def is_rejector_parameter(path: tuple, value: Any) -> bool:
    """The filter of what a run with a frozen classifier trains: the rejector's parameters."""
    return isinstance(value, nnx.Param) and path[0] == "rejector"


@dataclasses.dataclass(frozen=True)
class TwoStage:
    name: ClassVar[str] = "two_stage"

    options: TwoStageOptions
    problem: Problem

    @property
    def frozen(self) -> bool:
        return self.options.classifier_run is not None

    @property
    def measurements(self) -> dict[str, str]:
        return {name: title for name, title in TWO_STAGE_MEASUREMENTS.items()
                if name != CLF_LOSS or not self.frozen}

    @property
    def trainable(self):
        return is_rejector_parameter if self.frozen else nnx.Param

    @functools.cached_property
    def source(self):
        """With ``--classifier-run``: that run's method (the registry imports this module, so it
        is imported here), for the experts and options it was trained with."""
        from l2d.methods import make_method, registered

        options = self.options
        if options.classifier_method is None:
            raise L2DError(f"--classifier-run={options.classifier_run}: not resolved; a run "
                           "records that run's method when it starts")
        source_options = registered(options.classifier_method).options.from_values(
            json.loads(options.classifier_options))
        return make_method(options.classifier_method, source_options, dataclasses.replace(
            self.problem, num_experts=options.classifier_experts, min_share=None,
            max_share=None))

    def create_model(self, rngs: nnx.Rngs) -> TwoStageNetworks:
        options, problem = self.options, self.problem
        build = functools.partial(build_model, image_shape=problem.image_shape,
                                  dtype=problem.dtype, rngs=rngs)
        if self.frozen:
            classifier = self.source.create_model(rngs)
            # Running BatchNorm statistics in training too: a frozen classifier's never move.
            classifier.eval()
        else:
            classifier = build(options.clf_model, num_outputs=problem.num_classes,
                               width=options.clf_width)
        return TwoStageNetworks(classifier, build(options.rejector_model,
                                                  num_outputs=problem.num_experts + 1,
                                                  width=options.rejector_width))

    def classify(self, model: TwoStageNetworks, inputs) -> tuple[jax.Array, jax.Array]:
        """The classifier's (logits, probabilities), each ``[B, C]``."""
        if self.frozen:
            decision = self.source.decide(model.classifier, inputs)
            return (jax.lax.stop_gradient(decision.class_logits),
                    jax.lax.stop_gradient(decision.class_probabilities))
        logits = model.classifier(inputs)
        return logits, jax.nn.softmax(at_least_float32(logits), axis=-1)

    def loss(self, model: TwoStageNetworks, inputs, batch, key):
        clf_logits, _ = self.classify(model, inputs)
        rejector_logits = model.rejector(inputs)
        expert_labels = batch["expert_labels"]
        available = available_options(expert_labels)
        costs = option_costs(jnp.argmax(clf_logits, axis=-1), batch["label"], expert_labels)
        rejection = jnp.mean(rejector_loss(rejector_logits, costs, available))
        measurements = {REJECTOR_LOSS: rejection,
                        TRAIN_COVERAGE: training_coverage(rejector_logits, available)}
        if self.frozen:
            return rejection, measurements
        clf_loss = jnp.mean(cross_entropy(clf_logits, batch["label"]))
        return clf_loss + rejection, {CLF_LOSS: clf_loss, **measurements}

    def decide(self, model: TwoStageNetworks, inputs) -> Decision:
        clf_logits, probabilities = self.classify(model, inputs)
        return Decision(model.rejector(inputs).astype(jnp.float32), clf_logits, probabilities)

    def warm_start(self, model: TwoStageNetworks, trained_model) -> None:
        """With ``--classifier-run``: that run's trained model becomes the classifier."""
        if not self.frozen:
            return
        method, source_model = trained_model(self.options.classifier_run, "--classifier-run")
        if method.name != self.options.classifier_method:
            raise L2DError(f"--classifier-run={self.options.classifier_run}: its checkpoint "
                           f"was made by --method {method.name}, its configuration says "
                           f"{self.options.classifier_method}")
        nnx.update(model.classifier, nnx.state(source_model))
