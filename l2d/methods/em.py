"""EM: learning to defer as a mixture of experts with a latent z, trained by EM.

Notation (see the docs' "Methods" page): C classes, K experts, a latent z in {expert_1..expert_K,
classifier}; index K (the last) is the classifier. Shapes are given as ``[batch, ...]``.

- E-step: q(z) = p(z | x, y, t) proportional to p(z | x) p(y | z, x), computed in log space;
  with workload bounds, the posterior closest in KL whose batch shares meet them
  (``l2d.workload``).
- Missing annotations (expert label -1): under ``exclude`` that expert is no option for that
  input (likelihood 0, and the gate's softmax renormalised over the options present); under
  ``model`` its likelihood is an annotation network's p(t_k = y | x), trained on the annotations
  that are present.
- M-step: the classifier minimises its cross-entropy weighted by q(classifier); the gating model
  minimises the cross-entropy between its softmax and q, used as soft labels.

The pure ``jnp`` functions come first; ``EM`` puts them behind the method interface.
"""

import dataclasses
import functools
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import Decision, Problem, available_options, present, training_coverage
from l2d.methods.options import (
    ANNOTATION_LOSS,
    CLF_LOSS,
    EM_MEASUREMENTS,
    GATE_LOSS,
    TRAIN_COVERAGE,
    EMOptions,
)
from l2d.models import build_model
from l2d.workload import project_log_posterior, share_bounds

EStep = Literal["exact", "mc"]
ClassifierWeighting = Literal["posterior", "uniform"]


def expert_log_likelihood(
    expert_labels: jax.Array, labels: jax.Array, *, num_classes: int, smoothing: float,
    annotation_logits: jax.Array | None = None,
) -> jax.Array:
    """log p(y | z=k) for every expert k: ``[batch, K]``.

    With label smoothing eps an expert's annotation t_k is read as the distribution
    (1 - eps) onehot(t_k) + eps / C, so p(y | z=k) = 1 - eps + eps/C if t_k == y else eps/C.
    With eps = 0 a wrong expert gets -inf, which is exact: the posterior then gives it zero mass.
    A missing annotation gives -inf too (``exclude``), or, given the annotation network's
    ``annotation_logits`` ``[batch, K, C]``, its log p(t_k = y | x) (``model``).
    """
    correct = expert_labels == labels[:, None]
    p_correct = 1.0 - smoothing + smoothing / num_classes
    p_wrong = smoothing / num_classes
    # jnp.log(0.) is -inf without a warning or NaN; logsumexp in `posterior` handles it.
    observed = jnp.where(correct, jnp.log(p_correct), jnp.log(p_wrong)).astype(jnp.float32)
    if annotation_logits is None:
        unobserved = jnp.float32(-jnp.inf)
    else:
        log_probs = jax.nn.log_softmax(annotation_logits.astype(jnp.float32), axis=-1)
        unobserved = jnp.take_along_axis(log_probs, labels[:, None, None], axis=-1)[..., 0]
    return jnp.where(present(expert_labels), observed, unobserved)


def classifier_log_likelihood(clf_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log softmax(f(x))[y]: ``[batch]``."""
    log_probs = jax.nn.log_softmax(clf_logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def log_posterior(
    gate_logits: jax.Array, clf_logits: jax.Array, expert_log_lik: jax.Array, labels: jax.Array
) -> jax.Array:
    """Exact E-step: log q(z) over the K experts and the classifier, ``[batch, K + 1]``.

    Finite whenever the classifier's likelihood is finite, which log_softmax guarantees, so even a
    batch where every expert is wrong (all -inf with eps = 0) gives no NaN.
    """
    log_prior = jax.nn.log_softmax(gate_logits.astype(jnp.float32), axis=-1)
    log_lik = jnp.concatenate(
        [expert_log_lik, classifier_log_likelihood(clf_logits, labels)[:, None]], axis=-1
    )
    log_joint = log_prior + log_lik
    return log_joint - jax.nn.logsumexp(log_joint, axis=-1, keepdims=True)


def monte_carlo_posterior(key: jax.Array, log_q: jax.Array, num_samples: int) -> jax.Array:
    """Monte Carlo E-step: the empirical distribution of S samples z ~ q, ``[batch, K + 1]``."""
    samples = jax.random.categorical(key, log_q, axis=-1, shape=(num_samples, log_q.shape[0]))
    return jnp.mean(jax.nn.one_hot(samples, log_q.shape[-1], dtype=jnp.float32), axis=0)


def e_step(
    gate_logits: jax.Array,
    clf_logits: jax.Array,
    expert_labels: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    smoothing: float,
    method: EStep,
    mc_samples: int,
    key: jax.Array,
    bounds: tuple[jax.Array, jax.Array] | None = None,
    annotation_logits: jax.Array | None = None,
) -> jax.Array:
    """q(z) as a probability table ``[batch, K + 1]``, with no gradient to any network.

    ``bounds`` (lo, hi), each ``[K + 1]``, bound the batch means of q; ``annotation_logits``
    model the missing annotations (see ``expert_log_likelihood``).
    """
    expert_log_lik = expert_log_likelihood(
        expert_labels, labels, num_classes=num_classes, smoothing=smoothing,
        annotation_logits=annotation_logits)
    log_q = log_posterior(gate_logits, clf_logits, expert_log_lik, labels)
    if bounds is not None:
        log_q = project_log_posterior(log_q, *bounds)
    q = jnp.exp(log_q) if method == "exact" else monte_carlo_posterior(key, log_q, mc_samples)
    return jax.lax.stop_gradient(q)


def classifier_loss(
    clf_logits: jax.Array, labels: jax.Array, q: jax.Array, *, weighting: ClassifierWeighting
) -> jax.Array:
    """mean_i w_i CE(f(x_i), y_i), with w_i = q_i(classifier) or 1 (``weighting='uniform'``)."""
    cross_entropy = -classifier_log_likelihood(clf_logits, labels)
    weights = q[:, -1] if weighting == "posterior" else jnp.ones_like(cross_entropy)
    return jnp.mean(weights * cross_entropy)


def gate_log_prior(gate_logits: jax.Array, available: jax.Array | None = None) -> jax.Array:
    """log p(z | x) ``[batch, K + 1]``, renormalised over the ``available`` options if given
    (the others get -inf)."""
    logits = gate_logits.astype(jnp.float32)
    if available is not None:
        logits = jnp.where(available, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def gating_loss(gate_logits: jax.Array, q: jax.Array,
                available: jax.Array | None = None) -> jax.Array:
    """mean_i CE(g(x_i), q_i) with q as soft labels; over the ``available`` options only when
    given, so that a missing annotation never teaches the gate that its expert is bad."""
    log_prior = gate_log_prior(gate_logits, available)
    # q is 0 wherever the prior is -inf; `where` keeps 0 * -inf from becoming NaN.
    return -jnp.mean(jnp.sum(jnp.where(q > 0, q * log_prior, 0.0), axis=-1))


def annotation_loss(annotation_logits: jax.Array, expert_labels: jax.Array) -> jax.Array:
    """Cross-entropy of the annotation network ``[batch, K, C]`` on the annotations present,
    averaged over them."""
    log_probs = jax.nn.log_softmax(annotation_logits.astype(jnp.float32), axis=-1)
    observed = present(expert_labels)
    labels = jnp.where(observed, expert_labels, 0)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(observed, nll, 0.0)) / jnp.maximum(jnp.sum(observed), 1)


class EMNetworks(nnx.Module):
    """A classifier f over C classes and a gating model g over K experts + the classifier.

    The gate's last output (index K) is the classifier, the first K are the experts. With
    ``--missing model`` an annotation network with K x C outputs models p(t_k | x).
    """

    def __init__(self, classifier: nnx.Module, gate: nnx.Module,
                 annotator: nnx.Module | None = None):
        self.classifier = classifier
        self.gate = gate
        self.annotator = annotator


@dataclasses.dataclass(frozen=True)
class EM:
    """The EM method: a classifier and a gate, both updated once per batch (stochastic EM).

    Each network runs forward exactly once per batch, in training mode: the E-step reuses those
    logits under stop_gradient. The posterior therefore sees batch-statistics BatchNorm, as the
    M-step does; a separate eval-mode pass would cost a third more compute for no EM benefit.
    """

    name: ClassVar[str] = "em"

    options: EMOptions
    problem: Problem

    @property
    def measurements(self) -> dict[str, str]:
        """EM's measurements; the annotation loss only with an annotation network."""
        return {name: title for name, title in EM_MEASUREMENTS.items()
                if name != ANNOTATION_LOSS or self.models_annotations}

    @property
    def missing(self) -> str | None:
        """None: every annotation is present; else the --missing mode."""
        return self.options.missing if self.options.allow_missing_annotations else None

    @property
    def models_annotations(self) -> bool:
        return self.missing == "model"

    @property
    def bounded(self) -> bool:
        return (self.problem.min_share, self.problem.max_share) != (None, None)

    def create_model(self, rngs: nnx.Rngs) -> EMNetworks:
        options, problem = self.options, self.problem
        build = functools.partial(build_model, image_shape=problem.image_shape,
                                  dtype=problem.dtype, rngs=rngs)
        return EMNetworks(
            classifier=build(options.clf_model, num_outputs=problem.num_classes,
                             width=options.clf_width),
            gate=build(options.dfr_model, num_outputs=problem.num_experts + 1,
                       width=options.dfr_width),
            annotator=build(options.ann_model,
                            num_outputs=problem.num_experts * problem.num_classes,
                            width=options.ann_width) if self.models_annotations else None,
        )

    def loss(self, model: EMNetworks, inputs, batch, key):
        options, problem = self.options, self.problem
        clf_logits = model.classifier(inputs)
        gate_logits = model.gate(inputs)
        expert_labels = batch["expert_labels"]
        annotation_logits = None
        if self.models_annotations:
            annotation_logits = model.annotator(inputs).reshape(
                -1, problem.num_experts, problem.num_classes)
        bounds = None
        if self.bounded:
            bounds = tuple(jnp.asarray(share, jnp.float32) for share in share_bounds(
                problem.min_share, problem.max_share, problem.num_experts + 1))
        q = e_step(gate_logits, clf_logits, expert_labels, batch["label"],
                   num_classes=problem.num_classes, smoothing=options.expert_smoothing,
                   method=options.e_step, mc_samples=options.mc_samples, key=key,
                   bounds=bounds, annotation_logits=(
                       None if annotation_logits is None
                       else jax.lax.stop_gradient(annotation_logits)))
        clf_loss = classifier_loss(clf_logits, batch["label"], q,
                                   weighting=options.clf_weighting)
        available = self.gate_options(expert_labels)
        gate_loss = gating_loss(gate_logits, q, available)
        # The networks share no parameters, so the gradient of the sum gives each network
        # the gradient of its own loss, in one backward pass.
        measurements = {CLF_LOSS: clf_loss, GATE_LOSS: gate_loss,
                        TRAIN_COVERAGE: training_coverage(gate_log_prior(gate_logits, available))}
        total = clf_loss + gate_loss
        if annotation_logits is not None:
            measurements[ANNOTATION_LOSS] = annotation_loss(annotation_logits, expert_labels)
            total = total + measurements[ANNOTATION_LOSS]
        return total, measurements

    def gate_options(self, expert_labels: jax.Array) -> jax.Array | None:
        """The options the gate chooses among per input: those present under ``exclude``,
        all of them otherwise (None)."""
        return available_options(expert_labels) if self.missing == "exclude" else None

    def decide(self, model: EMNetworks, inputs) -> Decision:
        # The gate's q(z | x) is a choice among options, not P(expert right): no estimate.
        clf_logits = model.classifier(inputs)
        return Decision(model.gate(inputs), clf_logits,
                        jax.nn.softmax(clf_logits.astype(jnp.float32), axis=-1))
