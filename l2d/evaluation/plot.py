"""Plots of runs' per-epoch metrics, read back from MLflow: one PNG per metric, one line per run.

``plot_runs`` writes the plots every method shares (system test accuracy, test and training
coverage, area under the accuracy-coverage curve), one per training measurement of the runs'
methods (for EM the classifier and gating losses of the original implementation), the runs'
latest accuracy-coverage curves in one figure, and their reliability diagrams. The accuracy
plots draw, per run, the classifier alone and each expert alone as reference lines. Only when
asked (``log_artifacts``), each run also gets the plots of itself alone, logged under ``plots/``
without reopening it, so its status stays as it is: a figure of several runs, or another
method's loss, never lands in a run.

Figures are drawn on matplotlib's Agg canvas through ``matplotlib.figure.Figure``, never through
pyplot: no display is needed, no global backend is switched under a caller, and no figure is left
open. matplotlib (a dependency of mlflow) is imported only when something is drawn. Runs are read
through the tracker (``l2d.tracking``); nothing here imports JAX.
"""

import dataclasses
import itertools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from l2d.errors import L2DError
from l2d.evaluation import metrics
from l2d.evaluation.accuracy_coverage import CURVE_FILE
from l2d.evaluation.calibration import CALIBRATION_FILE
from l2d.methods import METHODS
from l2d.methods.options import TRAIN_COVERAGE, TRAIN_COVERAGE_DESCRIPTION
from l2d.tracking import (
    DESCRIPTION_TAG,
    EXPERTS_TAG,
    MEASUREMENTS_TAG,
    MlflowTracker,
)

# Characters of a run id that name a run without a name, and of a description in a legend.
ID_PREFIX = 8
DESCRIPTION_CHARS = 60
ARTIFACT_FOLDER = "plots"
# The figure of the runs' latest accuracy-coverage curves (``CURVE_FILE``).
CURVE_PLOT = "accuracy_coverage.png"
# The reliability diagrams of the runs' latest calibration bins (``CALIBRATION_FILE``).
RELIABILITY_PLOT = "reliability.png"
# The height a legend entry adds to a figure.
LEGEND_LINE_INCHES = 0.2
# Line styles of the reference lines of a run: the classifier alone, then each expert alone.
REFERENCE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 4)), (0, (8, 2)))


@dataclasses.dataclass(frozen=True)
class Plot:
    file: str  # PNG file name in the output folder and under the runs' ``plots/``.
    metric: str  # MLflow metric key, logged once per epoch with step = epochs finished.
    title: str
    ylabel: str
    ylim: tuple[float, float] | None = None  # Fixed y range; None: matplotlib's choice.


COMMON_PLOTS = (
    Plot("test_accuracy.png", metrics.ACCURACY, "System accuracy on the test split", "accuracy"),
    Plot("test_coverage.png", metrics.COVERAGE, "Test coverage",
         "coverage (share kept by the classifier)", (0.0, 1.0)),
    Plot("train_coverage.png", TRAIN_COVERAGE, TRAIN_COVERAGE_DESCRIPTION,
         "coverage (share kept by the classifier)", (0.0, 1.0)),
    Plot("accuracy_coverage_auc.png", metrics.AUC,
         "Area under the accuracy-coverage curve (test split)", "area", (0.0, 1.0)),
)


def method_plots(method: str, reported: str | None = None) -> list[Plot]:
    """The shared plots and one per training measurement of ``method``: those named in
    ``reported`` (the run's ``MEASUREMENTS_TAG``, comma-separated) if given, else all the
    method may report."""
    names = None if reported is None else set(reported.split(","))
    own = [Plot(f"{name.replace('/', '_')}.png", name, title, "loss" if "loss" in name else name)
           for name, title in METHODS[method].measurements.items()
           if name != TRAIN_COVERAGE and (names is None or name in names)]
    return [*COMMON_PLOTS, *own]


@dataclasses.dataclass(frozen=True)
class RunCurves:
    run_id: str
    label: str  # Legend entry: run name (or id prefix), then the description if any.
    plots: list[Plot]  # What this run's method logs.
    curves: dict[str, tuple[list[int], list[float]]]  # metric -> (epochs, values), by epoch.
    accuracy_coverage: dict[str, Any]  # The latest accuracy_coverage.json.
    # The accuracy plots' reference lines: "classifier alone", "expert NAME alone" -> (epochs,
    # values), those the run logged.
    references: dict[str, tuple[list[int], list[float]]] = dataclasses.field(
        default_factory=dict)
    # The latest calibration.json, or None for a run logged before l2d measured calibration.
    calibration: dict[str, Any] | None = None


def plot_runs(
    tracker: MlflowTracker, run_ids: list[str], output: Path, *, log_artifacts: bool = False
) -> list[Path]:
    """Write the metric plots and the accuracy-coverage figure of ``run_ids`` into ``output``;
    return the PNG paths.

    With ``log_artifacts``, each run also gets the plots of itself alone under ``plots/``.
    Raises ``L2DError`` (one line) for an unknown run, a missing metric history or curve, or an
    output folder that cannot be written.
    """
    if not run_ids:
        raise L2DError("no run ids given: name at least one run to plot")
    runs = [read_run(tracker, run_id) for run_id in dict.fromkeys(run_ids)]
    paths = draw_runs(runs, prepare_output(Path(output)))
    if log_artifacts:
        for run in runs:
            with tempfile.TemporaryDirectory() as folder:
                for path in (paths if len(runs) == 1 else draw_runs([run], Path(folder))):
                    tracker.log_artifact_to(run.run_id, path, ARTIFACT_FOLDER)
    return paths


def log_run_plots(tracker: MlflowTracker, run_id: str) -> None:
    """Log the plots of ``run_id`` alone under its ``plots/`` (as the end of a run does)."""
    with tempfile.TemporaryDirectory() as folder:
        plot_runs(tracker, [run_id], Path(folder), log_artifacts=True)


def draw_runs(runs: list[RunCurves], output: Path) -> list[Path]:
    """Every plot of ``runs`` into ``output``: each metric of any of them, then the curves."""
    plots = list({plot.file: plot for run in runs for plot in run.plots}.values())
    paths = [draw(plot, [run for run in runs if plot in run.plots], output / plot.file)
             for plot in plots]
    paths.append(draw_accuracy_coverage(runs, output / CURVE_PLOT))
    calibrated = [run for run in runs if run.calibration is not None]
    if calibrated:
        paths.append(draw_reliability(calibrated, output / RELIABILITY_PLOT))
    return paths


def read_run(tracker: MlflowTracker, run_id: str) -> RunCurves:
    """The run's legend label, the de-duplicated history of every metric its method logs, and
    its latest accuracy-coverage curve."""
    if not tracker.run_exists(run_id):
        raise L2DError(f"run {run_id}: no such run in {tracker.uri}")
    run = tracker.get_run(run_id)
    method = run.data.params.get("method")
    if method is None:
        raise L2DError(f"run {run_id}: no param 'method'; runs logged before l2d had methods "
                       f"(or not by l2d) cannot be plotted")
    if method not in METHODS:
        raise L2DError(f"run {run_id}: logged with method {method!r}, which this l2d does not "
                       f"know ({', '.join(METHODS)})")
    reported = run.data.tags.get(MEASUREMENTS_TAG)
    plots, curves = [], {}
    for plot in method_plots(method, reported):
        history = tracker.metric_history(run_id, plot.metric)
        if not history and reported is None and plot not in COMMON_PLOTS:
            continue  # A run from before the tag: its method's optional measurements.
        plots.append(plot)
        if not history:
            raise L2DError(f"run {run_id}: no metric '{plot.metric}' was logged "
                           f"(needed for {plot.file}); was it trained by l2d?")
        curves[plot.metric] = latest_per_step(history)
    return RunCurves(run_id, run_label(run), plots, curves, read_curve(tracker, run_id),
                     read_references(tracker, run), read_calibration(tracker, run_id))


def read_calibration(tracker: MlflowTracker, run_id: str) -> dict[str, Any] | None:
    try:
        return tracker.read_json_artifact(run_id, CALIBRATION_FILE)
    except L2DError:
        return None  # Logged before l2d measured calibration: no reliability diagram.


def read_references(tracker: MlflowTracker, run: Any) -> dict[str, tuple[list[int], list[float]]]:
    """The histories of the classifier alone and of each expert alone that ``run`` logged, by
    the names of its ``EXPERTS_TAG`` (else ``expert k``)."""
    names = json.loads(run.data.tags.get(EXPERTS_TAG, "[]"))
    count = sum(1 for key in run.data.metrics if re.fullmatch(r"expert_\d+/accuracy_alone", key))
    metric_names = {"classifier alone": metrics.CLF_ACCURACY,
                    **{f"expert {names[k] if k < len(names) else k} alone":
                       metrics.expert_accuracy_alone(k) for k in range(count)}}
    references = {}
    for label, name in metric_names.items():
        history = tracker.metric_history(run.info.run_id, name)
        if history:
            references[label] = latest_per_step(history)
    return references


def read_curve(tracker: MlflowTracker, run_id: str) -> dict[str, Any]:
    try:
        return tracker.read_json_artifact(run_id, CURVE_FILE)
    except L2DError:
        raise L2DError(f"run {run_id}: no readable artifact {CURVE_FILE} (needed for "
                       f"{CURVE_PLOT}); was it trained by l2d?") from None


def latest_per_step(history: list) -> tuple[list[int], list[float]]:
    """(steps, values) sorted by step, one value per step: the one logged last.

    A resumed run logs again the epochs between its last checkpoint and the interruption, so
    such steps hold two points (with equal values).
    """
    latest = {}
    for point in sorted(history, key=lambda m: m.timestamp):
        latest[point.step] = point.value
    steps = sorted(latest)
    return steps, [latest[step] for step in steps]


def run_label(run: Any) -> str:
    """``name: description`` (the description's first line, shortened), or ``name``."""
    name = run.info.run_name or run.info.run_id[:ID_PREFIX]
    lines = (run.data.tags.get(DESCRIPTION_TAG) or "").strip().splitlines()
    if not lines:
        return name
    description = lines[0].strip()
    if len(description) > DESCRIPTION_CHARS or len(lines) > 1:
        description = description[:DESCRIPTION_CHARS - 3].rstrip() + "..."
    return f"{name}: {description}"


def prepare_output(folder: Path) -> Path:
    """Create ``folder`` if needed and prove that a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".l2d-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise L2DError(f"{folder}: cannot write plots there ({error.strerror})") from None
    return folder


def draw(plot: Plot, runs: list[RunCurves], path: Path) -> Path:
    """One PNG: ``plot.metric`` against epochs, one line per run (markers when points are few)."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure()
    for run in runs:
        epochs, values = run.curves[plot.metric]
        # Unclipped and above the frame (zorder 2.5): a coverage of exactly 0 or 1, as in the
        # demo, stays visible on the axis line.
        line, = axes.plot(epochs, values, label=run.label,
                          marker="o" if len(epochs) <= 30 else None, markersize=3,
                          linewidth=1.5, clip_on=False, zorder=3)
        if plot.metric == metrics.ACCURACY:
            for (name, (steps, reference)), style in zip(run.references.items(),
                                                          itertools.cycle(REFERENCE_STYLES)):
                axes.plot(steps, reference, linestyle=style, linewidth=1,
                          color=line.get_color(), label=f"{run.label}: {name}")
    axes.set(title=plot.title, xlabel="epoch", ylabel=plot.ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if plot.ylim is not None:
        axes.set_ylim(*plot.ylim)
    return save(figure, path)


def draw_accuracy_coverage(runs: list[RunCurves], path: Path) -> Path:
    """The latest accuracy-coverage curve of every run, with its default decision marked."""
    figure, axes = new_figure()
    for run in runs:
        curve = run.accuracy_coverage
        line, = axes.plot(curve["coverage"], curve["accuracy"], linewidth=1.5, clip_on=False,
                          zorder=3, label=f"{run.label} (area {curve['auc']:.3f})")
        # The default decision (offset 0) at the curve's epoch is one of the curve's points.
        epoch = curve["epoch"]
        at_epoch = [dict(zip(*run.curves[m]))[epoch] for m in (metrics.COVERAGE,
                                                               metrics.ACCURACY)]
        axes.plot(*at_epoch, marker="o", color=line.get_color(), clip_on=False, zorder=4)
        for (name, (steps, reference)), style in zip(run.references.items(),
                                                    itertools.cycle(REFERENCE_STYLES)):
            # Alone, at the curve's epoch: what the system must beat at every coverage.
            value = dict(zip(steps, reference)).get(epoch)
            if value is not None:
                axes.axhline(value, linestyle=style, linewidth=1, color=line.get_color(),
                             label=f"{run.label}: {name}")
    axes.set(title="Accuracy against coverage (test split; dot: the default decision)",
             xlabel="coverage (share kept by the classifier)", ylabel="system accuracy",
             xlim=(0.0, 1.0))
    return save(figure, path)


def draw_reliability(runs: list[RunCurves], path: Path) -> Path:
    """Reliability diagrams: one panel for the classifier's top probability and one per expert
    whose P(right) a run estimates, each non-empty bin's accuracy against its mean estimate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    experts = max(len(run.calibration["experts"]) for run in runs)
    names = ["classifier: top probability", *(f"expert {k}: estimated P(right)"
                                              for k in range(experts))]
    figure = Figure(figsize=(3.2 * len(names) + 1, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(names), squeeze=False)[0]
    for index, (axes, name) in enumerate(zip(panels, names)):
        axes.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        for run, color in zip(runs, itertools.cycle(f"C{i}" for i in range(10))):
            bins = (run.calibration["classifier"] if index == 0 else
                    (run.calibration["experts"] + [None] * experts)[index - 1])
            points = [] if bins is None else [
                (e, a) for e, a in zip(bins["estimate"], bins["accuracy"]) if e is not None]
            if not points:
                continue
            axes.plot(*zip(*points), marker="o", markersize=3, color=color,
                      label=run.label if index == 0 else None)
        axes.set(title=name, xlabel="estimate (bin mean)", ylabel="accuracy", xlim=(0, 1),
                 ylim=(0, 1))
        axes.grid(alpha=0.3)
    figure.suptitle("Reliability (test split, 15 bins; dashed: perfect calibration)")
    return save(figure, path)


def new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(alpha=0.3)
    return figure, axes


def save(figure, path: Path) -> Path:
    # Below the axes, where it never hides a line (coverage often sits on 0 or 1); the figure
    # grows by a line of legend per entry, so that many runs never squeeze the axes.
    entries = len(figure.axes[0].get_legend_handles_labels()[1]) if figure.axes else 0
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + LEGEND_LINE_INCHES * entries)
    figure.legend(loc="outside lower center", fontsize="small", frameon=False)
    try:
        figure.savefig(path)
    except OSError as error:
        raise L2DError(f"{path}: cannot write the plot ({error.strerror})") from None
    return path

