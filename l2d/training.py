"""Training and evaluation runs: data checks, MLflow run, epoch loop, checkpoints, resume.

Order of work in ``train``: every check that can fail on user input (flags, tracking store,
artifact folder, manifests, images) runs before the MLflow run is created, so a bad input never
leaves a run behind; once the run exists, every exit ends it with a status.
"""

import concurrent.futures
import dataclasses
import functools
import importlib
import json
import math
import os
import sys
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

import l2d
from l2d import checkpoint
from l2d.config import LAST_EPOCH, TrainConfig
from l2d.data.dataset import Dataset, load_dataset
from l2d.data.pipeline import train_batches, train_steps_per_epoch
from l2d.errors import Interrupted, L2DError, TrainingDiverged, first_line
from l2d.evaluation.accuracy_coverage import CURVE_FILE
from l2d.evaluation.calibration import CALIBRATION_FILE, calibration_report
from l2d.evaluation.evaluate import check_test_workload, evaluate_split, make_predict_step
from l2d.evaluation.metrics import ACCURACY, AUC, COVERAGE, deferral_table, summarise
from l2d.evaluation.selection import (
    OFFSET,
    SELECTED,
    SELECTED_EPOCH,
    Selected,
    improves,
    validate_epoch,
)
from l2d.evaluation.stored_run import missing_counts
from l2d.parallel import data_parallel
from l2d.preprocess import channel_statistics
from l2d.run_folder import CONFIG_FILE, RunFolder, check_writable
from l2d.signals import StopRequests
from l2d.tracking import (
    CHECKPOINTS_TAG,
    EXPERTS_TAG,
    MEASUREMENTS_TAG,
    MlflowTracker,
    NullTracker,
    check_reachable,
    import_mlflow,
    resolve_tracking_uri,
)
from l2d.train_state import build_state, method_of
from l2d.train_step import NONFINITE_STEPS, make_train_step, zero_train_totals


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a finished training run gives back: its MLflow run id and its final test metrics."""

    run_id: str
    metrics: dict[str, float]


def resolve(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """The config with every derived value written in: classes, image shape, what the method
    records from earlier runs (``MethodOptions.resolved``) and normalisation statistics."""
    config = config.replace(num_classes=dataset.num_classes, image_shape=dataset.image_shape)
    artifact_path = config.tracking.artifact_path
    config = config.replace(**config.method_options.resolved(
        config, lambda run_id, flag: RunFolder.of(artifact_path, run_id).load_config(flag=flag)))
    mean, std = dataset.normalisation(config.data.norm_mean, config.data.norm_std)
    return config.replace(
        norm_mean=tuple(round(float(m), 6) for m in mean),
        norm_std=tuple(round(float(s), 6) for s in std))


def initial_state(config, method, steps_per_epoch, parallel, opening, resume_run_id):
    """(graphdef, replicated state, ``checkpoint.Restored`` or None): a new state, or the latest
    checkpoint of the run resumed, with the position and partial totals it was saved at.

    ``opening`` is the tracker being opened in the background; it is waited for only to check
    that the run to resume exists and has not finished.
    """
    total_steps = config.training.num_epochs * steps_per_epoch
    if resume_run_id is None:
        graphdef, state = build_state(method, config.training, total_steps=total_steps)
        if hasattr(method, "warm_start"):
            model, optimizer = nnx.merge(graphdef, state)
            method.warm_start(model, lambda run_id, flag: RunFolder.of(
                config.tracking.artifact_path, run_id).trained_model(parallel, flag=flag))
            state = nnx.state((model, optimizer))
        return graphdef, parallel.replicate(state), None
    check_resumable(opening.result(), resume_run_id)
    graphdef, restored = RunFolder.of(config.tracking.artifact_path, resume_run_id).restore(
        method, config.training, parallel, total_steps=total_steps,
        abstract_totals=parallel.abstract(zero_train_totals(method)))
    return graphdef, restored.state, restored


def check_resumable(tracker, run_id: str) -> None:
    """L2DError unless ``run_id`` exists and has not finished: a finished run resumed would only
    log its evaluation and its model a second time."""
    status = tracker.run_status(run_id)
    if status is None:
        raise L2DError(f"--run-id={run_id}: no such run in {tracker.uri}")
    if status == "FINISHED":
        raise L2DError(f"--run-id={run_id}: the run is FINISHED, there is nothing to resume; "
                       f"`--test --run-id {run_id}` evaluates it again, and a longer training "
                       "is a new run")


def train(config: TrainConfig, *, resume_run_id: str | None = None,
          register_model: str | None = None) -> RunResult:
    """Train (or resume) a run; return its id and final test metrics.

    The run ends by logging the trained system as the MLflow model ``deferral_system`` (also
    registered as ``register_model`` when given) and the plots of ``l2d plot``.
    """
    config.validate()
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    check_reachable(uri)
    check_writable(config.tracking.artifact_path)
    parallel = data_parallel()
    batch_size = config.training.batch_size
    parallel.check_batch_size(batch_size)
    # Importing mlflow and opening its store take seconds: the import runs beside the data checks,
    # the opening beside the model initialisation, once the data is known to be good (so that a
    # bad input leaves no trace in the store).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        background.submit(import_tracking_modules)
        dataset = load_dataset(config.data, config.runtime, seed=config.training.seed,
                               allow_missing=config.method_options.allow_missing_annotations)
        check_test_workload(config.evaluation, dataset.test)
        config = resolve(config, dataset)
        opening = background.submit(
            functools.partial(MlflowTracker, uri) if parallel.is_main else NullTracker)
        method = method_of(config)
        steps_per_epoch = train_steps_per_epoch(
            dataset.train.num_samples, batch_size, manifest=dataset.train.groundtruth_path)
        graphdef, state, restored = initial_state(
            config, method, steps_per_epoch, parallel, opening, resume_run_id)
        train_step, predict_step = compiled_steps(config, method, dataset, graphdef, state,
                                                  parallel)
        tracker = opening.result()

    run_id = None
    tracking = config.tracking
    try:
        with StopRequests() as stop, tracker.run(
                experiment_name=tracking.experiment_name, description=tracking.run_description,
                run_name=tracking.run_name, run_id=resume_run_id) as run_id:
            run_id = parallel.share_run_id(run_id)
            folder = RunFolder.of(tracking.artifact_path, run_id)
            if resume_run_id is None and parallel.is_main:
                log_run_start(tracker, folder, config, method, dataset)
            if parallel.is_main:
                print(f"l2d: run {run_id}: {tracker.run_url(run_id)}"
                      + ("" if tracker.uri.startswith("http") else
                         f"  (first: mlflow ui --backend-store-uri {tracker.uri})"),
                      file=sys.stderr)
            checkpoints = checkpoint.RunCheckpoints(folder.checkpoints,
                                                    keep=tracking.keep_checkpoints,
                                                    seed=config.training.seed, method=method.name)
            try:
                result = fit(config, method, dataset, train_step, predict_step, state, tracker,
                             checkpoints, stop, parallel, restored=restored,
                             steps_per_epoch=steps_per_epoch)
            finally:
                checkpoints.close()
            if config.selection.select_by != LAST_EPOCH:
                result = evaluate_selected(config, method, dataset, predict_step, tracker,
                                           folder, parallel, result,
                                           total_steps=steps_per_epoch
                                           * config.training.num_epochs)
            metrics = result.metrics
            tracker.log_dict(metrics, "final_metrics.json")
            tracker.log_dict(deferral_table(result.counts, config.data.options()),
                             "deferral_table.json")
            if parallel.is_main:
                finish_run(tracker, run_id, config, parallel.fetch(result.state[0]), dataset,
                           offset=result.offset, register_model=register_model)
            # A Ctrl-C while the model was logged ends the run KILLED, as during training.
            stop.check()
    except Interrupted as interrupted:
        interrupted.run_id = run_id
        raise
    parallel.wait_for_all("l2d: run ended")
    return RunResult(run_id, metrics)


def log_run_start(tracker, folder: RunFolder, config: TrainConfig, method, dataset) -> None:
    """What a new run records once: its configuration (file and params), tags, dataset inputs
    and, with missing annotations, how many each expert lacks."""
    folder.save_config(config)
    tracker.log_params(config.to_dict())
    tracker.log_dict(config.to_dict(), CONFIG_FILE)
    tracker.set_tags({CHECKPOINTS_TAG: str(folder.checkpoints),
                      MEASUREMENTS_TAG: ",".join(method.measurements),
                      EXPERTS_TAG: json.dumps(config.data.experts())})
    splits = [("train", dataset.train), ("test", dataset.test)]
    if dataset.val is not None:
        splits.append(("validation", dataset.val))
    for context, split in splits:
        tracker.log_dataset(name=split.dataset_name(), digest=split.digest(),
                            source=os.path.abspath(split.groundtruth_path), context=context)
    if config.method_options.allow_missing_annotations:
        tracker.log_metrics({**missing_counts("train", dataset.train),
                             **missing_counts("test", dataset.test)}, step=0)


def import_tracking_modules() -> None:
    """Import mlflow, and the model and plot modules the run ends with: seconds of imports that
    run beside the data checks and compilation instead of after training."""
    import_mlflow()
    for module in ("l2d.serving.pyfunc", "matplotlib.backends.backend_agg",
                   "matplotlib.figure"):
        importlib.import_module(module)


def compiled_steps(config, method, dataset, graphdef, state, parallel):
    """The jitted training and prediction steps, the training step already compiled.

    Compiling here, before the MLflow run is opened, lets it overlap the opening of the store;
    the first training step then runs at once.
    """
    mean, std = channel_statistics(config.data.norm_mean, config.data.norm_std)
    train_step = make_train_step(graphdef, method=method, seed=config.training.seed,
                                 augment_images=config.data.augment, channel_mean=mean,
                                 channel_std=std, replicated=parallel.replicated)
    predict_step = make_predict_step(graphdef, method=method, channel_mean=mean, channel_std=std,
                                     replicated=parallel.replicated)
    local_rows = config.training.batch_size // parallel.shard[1]
    example = parallel.put_batch({
        "image": np.zeros((local_rows, *dataset.image_shape), np.uint8),
        "label": np.zeros(local_rows, np.int32),
        "expert_labels": np.zeros((local_rows, dataset.num_experts), np.int32),
    })
    train_step.lower(state, parallel.replicate(zero_train_totals(method)), example, 0).compile()
    return train_step, predict_step


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The end of the epoch loop: the test metrics and counts of the state the run ends with,
    that state, and the operating point's offset it was routed at."""

    metrics: dict[str, float]
    counts: dict
    state: object
    offset: float


def fit(config, method, dataset, train_step, predict_step, state, tracker, checkpoints, stop,
        parallel, *, restored, steps_per_epoch) -> FitResult:
    """The epoch loop from where ``restored`` stands (None: the start), ending at the last
    epoch's state.

    Every evaluation logs the validation metrics (with a validation split; they choose the
    operating point's offset and, with ``--select-by``, the best checkpoint), the test metrics
    at that offset, the accuracy-coverage curve and the calibration bins. A Ctrl-C or SIGTERM
    takes effect after the step it came in (or after the epoch's end): the state there is saved
    (one process only; see ``save_and_stop``), then the run stops.
    """
    quiet = None if config.runtime.tqdm else True  # None: tqdm decides, silent when no terminal.
    start = restored.position if restored is not None else checkpoint.Position(0)
    batch_size, num_epochs = config.training.batch_size, config.training.num_epochs
    select_by = config.selection.select_by
    # The best epoch so far, as the checkpoint resumed from recorded it.
    selected = Selected.from_json(restored.extra.get("selected") if restored else None)

    def evaluate_and_log(state, epoch):
        validation, offset = None, 0.0
        if dataset.val is not None:
            validation = validate_epoch(
                predict_step, state, dataset.val, dataset.val_images,
                num_classes=dataset.num_classes, batch_size=batch_size, runtime=config.runtime,
                evaluation=config.evaluation, selection=config.selection, parallel=parallel)
            offset = validation.offset
        evaluation = evaluate_split(predict_step, state, dataset.test, dataset.test_images,
                                    num_classes=dataset.num_classes, batch_size=batch_size,
                                    runtime=config.runtime, evaluation=config.evaluation,
                                    parallel=parallel, offset=offset)
        log_evaluation_files(tracker, evaluation, epoch)
        metrics = {**summarise(evaluation.counts), AUC: evaluation.curve.area()}
        return metrics, evaluation.counts, validation, offset

    def recorded(offset=None):
        """What a checkpoint records beside the state: its offset when it was evaluated."""
        return {**({} if offset is None else {"offset": offset}),
                "selected": selected.to_json() if selected else None}

    def save_and_stop(state, totals, position, *, saved_at_epoch_end=False, offset=None):
        if not saved_at_epoch_end and parallel.is_single_process:
            # Several processes get their signals at different steps, and a save needs them all.
            checkpoints.save_interrupted(state, totals, position,
                                         steps_per_epoch=steps_per_epoch,
                                         extra=recorded(offset))
        saved = saved_at_epoch_end or parallel.is_single_process
        raise Interrupted(f"signal {stop.received}", saved=(
            f"its state {position.describe(steps_per_epoch)} is saved" if saved else None))

    metrics, counts, offset = {}, {}, 0.0
    first_step_reported = False
    epochs = tqdm(range(start.epoch, num_epochs), desc="epochs", initial=start.epoch,
                  total=num_epochs, disable=quiet, file=sys.stderr)
    for epoch in epochs:
        first_step = start.step if epoch == start.epoch else 0
        totals = (restored.totals if first_step and restored.totals is not None
                  else parallel.replicate(zero_train_totals(method)))
        started = time.perf_counter()
        loader_wait = 0.0
        if first_step < steps_per_epoch:
            batches = train_batches(
                dataset.train, dataset.train_images, batch_size=batch_size,
                seed=config.training.seed, epoch=epoch,
                prefetch_size=config.runtime.prefetch_size,
                num_threads=config.runtime.num_threads, shard=parallel.shard,
                first_step=first_step)
            for index in tqdm(range(first_step, steps_per_epoch), desc=f"epoch {epoch + 1}",
                              leave=False, disable=quiet, file=sys.stderr, initial=first_step,
                              total=steps_per_epoch):
                waiting = time.perf_counter()
                batch = next(batches)
                loader_wait += time.perf_counter() - waiting
                state, totals = train_step(state, totals, parallel.put_batch(batch),
                                           epoch * steps_per_epoch + index)
                if not first_step_reported and parallel.is_main:
                    report_first_step(totals, tracker)
                    first_step_reported = True
                if stop.requested:
                    batches.close()
                    save_and_stop(state, totals, checkpoint.Position(epoch, index + 1))
        totals = parallel.fetch(totals)
        # fetch waited for the last step, so this is the epoch's whole training time.
        train_seconds = time.perf_counter() - started
        loader_wait_fraction = loader_wait / train_seconds
        nonfinite_steps = int(totals.pop(NONFINITE_STEPS))
        train_metrics = {k: float(v) / steps_per_epoch for k, v in totals.items()}
        # The only host sync of the epoch: NaN shows here, before a checkpoint could store it.
        diverged = {k: v for k, v in train_metrics.items() if not math.isfinite(v)}
        if nonfinite_steps:
            diverged["steps with non-finite gradients or weights"] = nonfinite_steps
        if diverged:
            last = checkpoints.latest_epoch()
            raise TrainingDiverged(
                f"epoch {epoch + 1}: {', '.join(f'{k}={v}' for k, v in diverged.items())}; "
                "stopped, " + (f"last good checkpoint: epoch {last} in {checkpoints.directory}"
                               if last is not None else "no checkpoint was written"))
        metrics, counts, validation, offset = evaluate_and_log(state, epoch + 1)
        val_metrics = validation.metrics if validation is not None else {}
        tracker.log_metrics({**train_metrics, **metrics, **val_metrics,
                             "loader/wait_fraction": loader_wait_fraction}, step=epoch + 1)
        epochs.set_postfix(accuracy=f"{metrics[ACCURACY]:.3f}",
                           coverage=f"{metrics[COVERAGE]:.2f}")
        if epoch == start.epoch and parallel.is_main:
            report_duration(epoch + 1, train_seconds=train_seconds,
                            eval_seconds=time.perf_counter() - started - train_seconds,
                            steps_trained=steps_per_epoch - first_step,
                            steps_per_epoch=steps_per_epoch, epochs_left=num_epochs - epoch)
        if validation is not None and improves(val_metrics.get(select_by, math.nan), selected,
                                               select_by):
            selected = Selected(epoch + 1, val_metrics[select_by], offset)
            checkpoints.save_best(state, epoch=epoch + 1, extra=recorded(offset))
        at_checkpoint = ((epoch + 1) % config.tracking.checkpoint_every == 0
                         or epoch + 1 == num_epochs)
        if at_checkpoint:
            checkpoints.save_epoch(state, epoch=epoch + 1, extra=recorded(offset))
        if stop.requested:
            save_and_stop(state, parallel.replicate(zero_train_totals(method)),
                          checkpoint.Position(epoch + 1), saved_at_epoch_end=at_checkpoint,
                          offset=offset)
    if start.epoch == num_epochs:
        # Killed after its last checkpoint, before it ended: only the final report is missing.
        metrics, counts, _, offset = evaluate_and_log(state, start.epoch)
    return FitResult(metrics, counts, state, offset)


def log_evaluation_files(tracker, evaluation, epoch: int) -> None:
    """The accuracy-coverage curve and the calibration bins of a test evaluation."""
    tracker.log_dict({"epoch": epoch, **evaluation.curve.to_json()}, CURVE_FILE)
    tracker.log_dict({"epoch": epoch, **calibration_report(evaluation.counts)},
                     CALIBRATION_FILE)


def evaluate_selected(config, method, dataset, predict_step, tracker, folder, parallel,
                      last: FitResult, *, total_steps: int) -> FitResult:
    """The end of a run with ``--select-by``: the test split routed by the best checkpoint at
    its own offset, logged as ``selected/<metric>`` with ``selected/epoch`` and the validation
    value that selected it (``selected/val/...``), and as the latest curve and calibration files;
    the last epoch's result when no epoch was selected (every validation value NaN)."""
    try:
        _, best = folder.restore(method, config.training, parallel, total_steps=total_steps,
                                 selected=True)
    except checkpoint.NoCheckpoint:
        print(f"l2d: warning: --select-by {config.selection.select_by} was NaN at every epoch; "
              "the run ends with its last epoch", file=sys.stderr)
        return last
    offset = float(best.extra.get("offset", 0.0))
    evaluation = evaluate_split(predict_step, best.state, dataset.test, dataset.test_images,
                                num_classes=dataset.num_classes,
                                batch_size=config.training.batch_size, runtime=config.runtime,
                                evaluation=config.evaluation, parallel=parallel, offset=offset)
    log_evaluation_files(tracker, evaluation, best.position.epoch)
    metrics = {**summarise(evaluation.counts), AUC: evaluation.curve.area()}
    select_by = config.selection.select_by
    tracker.log_metrics({SELECTED_EPOCH: best.position.epoch,
                         SELECTED + select_by: float(best.extra["selected"]["value"]),
                         **{SELECTED + name: value for name, value in
                            {**metrics, OFFSET: offset}.items()}},
                        step=config.training.num_epochs)
    if parallel.is_main:
        print(f"l2d: selected epoch {best.position.epoch} by {select_by}", file=sys.stderr)
    return FitResult(metrics, evaluation.counts, best.state, offset)


def finish_run(tracker, run_id, config, model_state, dataset, *, offset: float,
               register_model) -> None:
    """The end of a run: log the model ``deferral_system`` (its input example the first test
    images; routing at the operating point's ``offset``) and the plots of the run.

    A failure of MLflow here is one line (the run ends FAILED, its checkpoints kept); a failed
    plot is only reported, since ``l2d plot`` can draw it again.
    """
    from l2d.evaluation.plot import log_run_plots
    from l2d.serving.pyfunc import log_deferral_system
    from l2d.serving.trained_system import EXAMPLE_IMAGES, read_image_files

    example = dataset.test_images.pixels
    if example is None:  # Streamed from disk: decode the images the example needs.
        example = read_image_files(dataset.test.files[:EXAMPLE_IMAGES],
                                   dataset.test.groundtruth_path)
    try:
        uri = log_deferral_system(config, model_state, example[:EXAMPLE_IMAGES], offset=offset,
                                  registered_model_name=register_model)
    except Exception as error:  # Any MLflow or store error: say it in one line.
        line = first_line(error)
        raise L2DError(f"logging the model deferral_system of run {run_id} failed "
                       f"({line[:200]}); its checkpoints are kept, `l2d export --run-id "
                       f"{run_id}` logs it") from None
    print(f"l2d: model {uri}" + (f", registered as {register_model}" if register_model else ""),
          file=sys.stderr)
    try:
        log_run_plots(tracker, run_id)
    except Exception as error:  # Drawing or logging: the run itself is complete.
        line = first_line(error)
        print(f"l2d: warning: the plots of run {run_id} were not logged ({line[:200]}); "
              f"`l2d plot --run-id {run_id}` draws them", file=sys.stderr)


# Above this, the first epoch's pace is printed with the time the whole run will take.
LONG_RUN_S = 600


def report_duration(epoch: int, *, train_seconds: float, eval_seconds: float,
                    steps_trained: int, steps_per_epoch: int, epochs_left: int) -> None:
    """After the first epoch this launch trained (``epoch``, counted from 1, perhaps resumed in
    its middle), say how long the run will take when that is long (on a CPU, the default
    networks take hours: the README's "Training" gives CPU-sized ones)."""
    if not steps_trained:
        return
    epoch_seconds = train_seconds / steps_trained * steps_per_epoch + eval_seconds
    left = epoch_seconds * (epochs_left - 1)
    if left > LONG_RUN_S:
        platform = jax.devices()[0].platform
        print(f"l2d: epoch {epoch} took {epoch_seconds:.0f} s on the {platform}; the "
              f"{epochs_left - 1} epochs left take about {left / 3600:.1f} h at this pace"
              + (" (the README's \"Training\" shows CPU-sized networks)" if platform == "cpu"
                 else ""), file=sys.stderr)


def report_first_step(totals, tracker) -> None:
    """Print and log the seconds from the start of the l2d command (``l2d.IMPORTED_AT``) to the
    end of the first training step.

    The one host sync outside the end of an epoch: it measures start-up (imports, decoding,
    initialisation, compilation), which the persistent compilation cache shortens.
    """
    jax.block_until_ready(totals)
    seconds = time.time() - l2d.IMPORTED_AT
    print(f"l2d: first training step done {seconds:.1f} s after launch", file=sys.stderr)
    tracker.log_metrics({"startup/first_step_s": seconds}, step=0)
