"""Plots of runs read back from a real local MLflow store; metrics logged directly, no training."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow import MlflowClient
from mlflow.entities import Metric

from l2d.errors import L2DError
from l2d.evaluation import metrics
from l2d.evaluation.accuracy_coverage import CURVE_FILE
from l2d.evaluation.plot import latest_per_step, method_plots, plot_runs, read_run, run_label
from l2d.methods import METHODS, em
from l2d.methods.options import SURROGATE_LOSS, TRAIN_COVERAGE
from l2d.tracking import EXPERTS_TAG, MEASUREMENTS_TAG, MlflowTracker, open_store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 4


def log_epochs(client: MlflowClient, run_id: str, *, offset: float, skip: str = "",
               method: str = "em", tagged: bool = True) -> None:
    """Per-epoch metrics and the last accuracy-coverage curve shaped like a real run's, with
    step = epochs finished; ``tagged=False`` as logged before runs listed their measurements."""
    client.log_param(run_id, "method", method)
    # EM without --missing model reports no annotation loss.
    reported = ",".join(name for name in METHODS[method].measurements
                        if name != em.ANNOTATION_LOSS)
    if tagged:
        client.set_tag(run_id, MEASUREMENTS_TAG, reported)
    for epoch in range(1, EPOCHS + 1):
        client.log_batch(run_id, metrics=[
            Metric(plot.metric, epoch_value(plot.metric, epoch, offset), 1000 * epoch, epoch)
            for plot in method_plots(method, reported) if plot.metric != skip])
    coverage = epoch_value(metrics.COVERAGE, EPOCHS, offset)
    client.log_dict(run_id, {"epoch": EPOCHS, "coverage": [0.0, coverage, 1.0],
                             "accuracy": [0.5, epoch_value(metrics.ACCURACY, EPOCHS, offset), 0.4],
                             "auc": 0.5}, CURVE_FILE)


def epoch_value(metric: str, epoch: int, offset: float) -> float:
    """Accuracy and coverage rise towards 1; losses fall."""
    if metric in (metrics.ACCURACY, metrics.COVERAGE, metrics.AUC, TRAIN_COVERAGE):
        return min(1.0, offset + 0.1 * epoch)
    return 2.0 / epoch + offset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs: FINISHED with a description; KILLED and resumed (step 3 logged twice); FAILED
    without EM's gating loss; RUNNING, for plotting without logging (and without the measurements
    tag); a softmax run; one without
    its curve; one without the method param (as before l2d had methods)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "plots", artifact_location=(root / "mlartifacts").as_uri())
    finished = client.create_run(experiment, run_name="finished-run",
                                 tags={"mlflow.note.content": "two noisy experts"})
    log_epochs(client, finished.info.run_id, offset=0.0)
    client.set_terminated(finished.info.run_id, "FINISHED")
    killed = client.create_run(experiment, run_name="resumed-run")
    log_epochs(client, killed.info.run_id, offset=0.3)
    # The epoch trained again after a resume: same step, later timestamp.
    client.log_metric(killed.info.run_id, metrics.ACCURACY, 0.5, timestamp=99_000, step=3)
    client.set_terminated(killed.info.run_id, "KILLED")
    partial = client.create_run(experiment, run_name="no-dfr-loss")
    log_epochs(client, partial.info.run_id, offset=0.0, skip=em.GATE_LOSS)
    client.set_terminated(partial.info.run_id, "FAILED")
    quiet = client.create_run(experiment, run_name="plotted-without-logging")
    log_epochs(client, quiet.info.run_id, offset=0.1, tagged=False)
    surrogate = client.create_run(experiment, run_name="softmax-run")
    log_epochs(client, surrogate.info.run_id, offset=0.2, method="softmax")
    client.set_terminated(surrogate.info.run_id, "FINISHED")
    no_curve = client.create_run(experiment, run_name="no-curve")
    client.log_param(no_curve.info.run_id, "method", "em")
    for plot in method_plots("em"):
        client.log_metric(no_curve.info.run_id, plot.metric, 0.5, step=1)
    no_method = client.create_run(experiment, run_name="no-method")
    for plot in method_plots("em"):
        client.log_metric(no_method.info.run_id, plot.metric, 0.5, step=1)
    return SimpleNamespace(uri=uri, client=client, finished=finished.info.run_id,
                           killed=killed.info.run_id, partial=partial.info.run_id,
                           quiet=quiet.info.run_id, surrogate=surrogate.info.run_id,
                           no_curve=no_curve.info.run_id, no_method=no_method.info.run_id)


def test_plots_are_real_pngs_and_are_logged_to_every_run(store, tmp_path):
    output = tmp_path / "new" / "plots"
    paths = plot_runs(open_store(store.uri), [store.finished, store.killed], output,
                      log_artifacts=True)
    assert [p.name for p in paths] == [
        "test_accuracy.png", "test_coverage.png", "train_coverage.png",
        "accuracy_coverage_auc.png", "loss_clf.png", "loss_dfr.png", "accuracy_coverage.png"]
    for path in paths:
        assert path.parent == output
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
        pixels = imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, (path, pixels.shape)
        # Lines in two colours, text and a white background: far from blank.
        rgb = np.round(pixels[..., :3] * 255).astype(np.uint32)
        colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
        assert len(colours) > 10, (path, len(colours))
    for run_id, status in ((store.finished, "FINISHED"), (store.killed, "KILLED")):
        logged = {a.path for a in store.client.list_artifacts(run_id, "plots")}
        assert logged == {f"plots/{p.name}" for p in paths}, run_id
        assert store.client.get_run(run_id).info.status == status
    assert not list(output.glob(".l2d-write-test"))


def test_without_log_artifacts_nothing_is_logged(store, tmp_path):
    plot_runs(open_store(store.uri), [store.quiet], tmp_path, log_artifacts=False)
    # Six metric plots and the curves: without the measurements tag (a run logged before it
    # existed) the plots are those of the measurements it logged.
    assert len(list(tmp_path.glob("*.png"))) == 7
    assert [a.path for a in store.client.list_artifacts(store.quiet)] == [
        "accuracy_coverage.json"]
    assert store.client.get_run(store.quiet).info.status == "RUNNING"


def test_a_resumed_epoch_counts_once_with_its_last_value(store):
    run = read_run(MlflowTracker(store.uri), store.killed)
    steps, values = run.curves[metrics.ACCURACY]
    assert steps == [1, 2, 3, 4] and values == pytest.approx([0.4, 0.5, 0.5, 0.7])
    assert run.curves[em.CLF_LOSS][0] == [1, 2, 3, 4]
    assert run.label == "resumed-run"
    assert read_run(MlflowTracker(store.uri), store.finished).label == \
        "finished-run: two noisy experts"


def test_runs_of_different_methods_share_the_common_plots_and_keep_their_own(store, tmp_path):
    paths = plot_runs(open_store(store.uri), [store.finished, store.surrogate], tmp_path,
                      log_artifacts=False)
    assert [p.name for p in paths] == [
        "test_accuracy.png", "test_coverage.png", "train_coverage.png",
        "accuracy_coverage_auc.png", "loss_clf.png", "loss_dfr.png", "loss_surrogate.png",
        "accuracy_coverage.png"]
    # Nothing is logged unless asked; asked, each run gets only its own method's plots.
    assert not store.client.list_artifacts(store.surrogate, "plots")
    plot_runs(open_store(store.uri), [store.finished, store.surrogate], tmp_path / "logged",
              log_artifacts=True)
    logged = {a.path for a in store.client.list_artifacts(store.surrogate, "plots")}
    assert "plots/loss_surrogate.png" in logged and "plots/loss_clf.png" not in logged
    assert read_run(MlflowTracker(store.uri), store.surrogate).curves[SURROGATE_LOSS][0] == [
        1, 2, 3, 4]


def test_a_run_without_its_accuracy_coverage_curve_is_named(store, tmp_path):
    with pytest.raises(L2DError, match=rf"run {store.no_curve}: no readable artifact "
                                       r"accuracy_coverage.json"):
        plot_runs(open_store(store.uri), [store.no_curve], tmp_path)


def test_the_accuracy_plots_reference_the_classifier_and_each_expert_alone(store, tmp_path):
    client = store.client
    run_id = client.create_run(client.get_run(store.finished).info.experiment_id).info.run_id
    log_epochs(client, run_id, offset=0.0)
    client.set_tag(run_id, EXPERTS_TAG, json.dumps(["ann", "bob"]))
    for epoch in range(1, EPOCHS + 1):
        client.log_batch(run_id, metrics=[
            Metric(metrics.CLF_ACCURACY, 0.1 * epoch, 1000 * epoch, epoch),
            Metric(metrics.expert_accuracy_alone(0), 0.6, 1000 * epoch, epoch),
            Metric(metrics.expert_accuracy_alone(1), 0.7, 1000 * epoch, epoch)])
    references = read_run(MlflowTracker(store.uri), run_id).references
    assert references == {"classifier alone": ([1, 2, 3, 4], pytest.approx([0.1, 0.2, 0.3, 0.4])),
                          "expert ann alone": ([1, 2, 3, 4], [0.6] * 4),
                          "expert bob alone": ([1, 2, 3, 4], [0.7] * 4)}
    assert len(plot_runs(open_store(store.uri), [run_id], tmp_path)) == 7


def test_latest_per_step_keeps_the_point_logged_last():
    history = [Metric("accuracy", 0.2, 30, 2), Metric("accuracy", 0.1, 10, 1),
               Metric("accuracy", 0.9, 20, 2), Metric("accuracy", 0.3, 40, 3)]
    assert latest_per_step(history) == ([1, 2, 3], [0.1, 0.2, 0.3])


def test_label_falls_back_to_the_id_and_shortens_descriptions():
    def run(name, description=None):
        tags = {} if description is None else {"mlflow.note.content": description}
        return SimpleNamespace(info=SimpleNamespace(run_name=name, run_id="0123456789abcdef"),
                               data=SimpleNamespace(tags=tags))

    assert run_label(run(None)) == "01234567"
    assert run_label(run("a", "first line\nsecond")) == "a: first line..."
    assert len(run_label(run("a", "x" * 200))) == len("a: ") + 60


def test_unknown_run_id_is_a_one_line_error_naming_it_and_the_store(store, tmp_path):
    with pytest.raises(L2DError) as error:
        plot_runs(open_store(store.uri), [store.finished, "f" * 32], tmp_path / "out")
    message = str(error.value)
    assert "f" * 32 in message and store.uri in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_missing_metric_history_is_named(store, tmp_path):
    with pytest.raises(L2DError, match=rf"run {store.partial}: no metric '{em.GATE_LOSS}'"):
        plot_runs(open_store(store.uri), [store.partial], tmp_path)
    assert store.client.list_artifacts(store.partial, "plots") == []


def test_a_run_without_its_method_is_refused(store, tmp_path):
    with pytest.raises(L2DError, match=rf"^run {store.no_method}: no param 'method'; "):
        plot_runs(open_store(store.uri), [store.no_method], tmp_path)


def test_unwritable_output_folder_is_a_one_line_error(store, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(L2DError, match=rf"^{blocker}/plots: cannot write plots there \("):
        plot_runs(open_store(store.uri), [store.finished], blocker / "plots",
                  log_artifacts=False)


def test_a_missing_sqlite_store_is_not_created(tmp_path):
    database = tmp_path / "typo.db"
    with pytest.raises(L2DError, match="does not exist"):
        plot_runs(open_store(f"sqlite:///{database}"), ["0" * 32], tmp_path / "out")
    assert not database.exists()


def test_no_run_ids_is_an_error(store, tmp_path):
    with pytest.raises(L2DError, match="no run ids"):
        plot_runs(open_store(store.uri), [], tmp_path)
