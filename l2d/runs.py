"""``l2d runs``: the runs of a tracking store, newest first, with what a person picks one by:
status, name, method, test accuracy and coverage, and whether it has a model to serve.

``--newest`` prints only the id of the newest run of the status asked for (FINISHED by default),
for scripts: ``RUN_ID=$(l2d runs --newest)``.
"""

from l2d.evaluation.metrics import ACCURACY, COVERAGE


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
