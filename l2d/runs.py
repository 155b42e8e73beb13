"""``l2d runs``: the runs of a tracking store, newest first, with what a person picks one by:
status, name, method, test accuracy and coverage, and whether it has a model to serve.

``--newest`` prints only the id of the newest run of the status asked for (FINISHED by default),
for scripts: ``RUN_ID=$(l2d runs --newest)``.
"""

from l2d.errors import L2DError
from l2d.metrics import ACCURACY, COVERAGE


def search(tracker, *, status: str | None, experiment_name: str | None) -> list:
    """The runs of the store (of ``experiment_name`` if given) with ``status`` (any if None),
    newest first."""
    client = tracker.client
    if experiment_name is None:
        experiments = [e.experiment_id for e in client.search_experiments()]
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise L2DError(f"--experiment-name={experiment_name}: no such experiment in "
                           f"{tracker.uri}")
        experiments = [experiment.experiment_id]
    if not experiments:
        return []
    return client.search_runs(
        experiments, filter_string=f"attributes.status = '{status}'" if status else "",
        order_by=["attributes.start_time DESC"])


def has_model(run) -> bool:
    """Whether the run logged a model (an l2d run logs one, ``deferral_system``, at its end)."""
    return bool(run.outputs and run.outputs.model_outputs)


def table(runs: list) -> str:
    """One line per run: id, status, start, name, method, accuracy, coverage, model."""
    import datetime

    rows = [("run id", "status", "started", "name", "method", "accuracy", "coverage", "model")]
    for run in runs:
        started = datetime.datetime.fromtimestamp(run.info.start_time / 1000)
        measured = [f"{run.data.metrics[name]:.3f}" if name in run.data.metrics else "-"
                    for name in (ACCURACY, COVERAGE)]
        rows.append((run.info.run_id, run.info.status, started.strftime("%Y-%m-%d %H:%M"),
                     run.info.run_name or "-", run.data.params.get("method", "-"), *measured,
                     "yes" if has_model(run) else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)
