"""A new method is one file plus one registry line: a toy method, defined here and nowhere in
``l2d/``, gets its flags, its ``--help`` group, the "flag of another method" error, its params
and ``config.json``, and trains, evaluates and logs through the real CLI."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import mlflow
import pytest
from conftest import in_process_cli, load, train_argv

from l2d.methods import METHODS, Registered
from l2d.methods.base import Decision, Problem, training_coverage
from l2d.methods.options import TRAIN_COVERAGE, TRAIN_COVERAGE_DESCRIPTION
from l2d.models import build_model
from l2d.options import MethodOptions, check_at_least, option

TOY_LOSS = "loss/toy"


@dataclasses.dataclass(frozen=True)
class ToyOptions(MethodOptions):
    toy_width: int = option(2, "width of the toy's classifier")
    toy_margin: float = option(0.5, "the classifier keeps an input when its top softmax "
                               "probability is above this")

    def validate(self) -> None:
        check_at_least(self, ("toy_width",), 1)


@dataclasses.dataclass(frozen=True)
class Toy:
    """A classifier trained by cross-entropy that defers to the first expert below a margin."""

    name: ClassVar[str] = "toy"
    measurements: ClassVar[dict[str, str]] = {
        TOY_LOSS: "Toy loss (training)", TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION}

    options: ToyOptions
    problem: Problem

    def create_model(self, rngs):
        return build_model("cnn", image_shape=self.problem.image_shape,
                           num_outputs=self.problem.num_classes, width=self.options.toy_width,
                           rngs=rngs, dtype=self.problem.dtype)

    def scores(self, logits):
        """``[B, K + 1]``: the margin for the first expert, -1 for the others, the classifier's
        top softmax probability last."""
        confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32)), axis=-1)
        experts = jnp.full((logits.shape[0], self.problem.num_experts), -1.0)
        experts = experts.at[:, 0].set(self.options.toy_margin)
        return jnp.concatenate([experts, confidence[:, None]], axis=-1)

    def loss(self, model, inputs, batch, key):
        logits = model(inputs)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
        loss = -jnp.mean(jnp.take_along_axis(log_p, batch["label"][:, None], axis=-1))
        return loss, {TOY_LOSS: loss, TRAIN_COVERAGE: training_coverage(self.scores(logits))}

    def decide(self, model, inputs):
        logits = model(inputs)
        return Decision(self.scores(logits), logits, jax.nn.softmax(logits, axis=-1))


@pytest.fixture
def toy_registered(monkeypatch):
    """The one registry line of the toy method."""
    monkeypatch.setitem(METHODS, "toy", Registered(
        "toy", "a toy classifier deferring below a margin", ToyOptions, Toy.measurements, Toy))


def test_a_toy_method_defined_outside_l2d_trains_through_the_cli(
        toy_registered, tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        in_process_cli(monkeypatch, capsys, "train", "--help")
    help_text = capsys.readouterr().out
    assert "method toy:" in help_text and "--toy-margin" in help_text and "toy:" in help_text

    data_flags = train_argv(tiny_dataset, models=[])[4:]
    code, err = in_process_cli(monkeypatch, capsys, "train", *data_flags, "--method", "em",
                               "--toy-margin", "0.9")
    assert code == 2 and "--toy-margin: only used by --method toy, not by --method em" in err

    code, err = in_process_cli(monkeypatch, capsys, "train", *data_flags, "--method", "toy",
                               "--toy-width", "3", "--toy-margin", "0.7", "--num-epochs", "2",
                               "--batch-size", "8", "--no-tqdm")
    assert code == 0, err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "toy" and run.data.params["toy_margin"] == "0.7"
    assert "clf_width" not in run.data.params and "width" not in run.data.params
    assert [m.step for m in client.get_metric_history(run.info.run_id, TOY_LOSS)] == [1, 2]
    stored = load(tmp_path / "artifacts" / run.info.run_id / "config.json")
    assert stored["method"] == "toy" and stored["toy_width"] == 3
    assert run.outputs.model_outputs, "the run logged its deferral_system model"

    code, err = in_process_cli(monkeypatch, capsys, "train", "--test", "--run-id",
                               run.info.run_id, "--no-tqdm")
    assert code == 0, err
    assert "the checkpoint after epoch 2" in err
