"""Mean +- std over seeds of every method's final test metrics in one MLflow experiment.

    .venv/bin/python benchmarks/method_table.py --experiment-name cifar10-methods \
        [--tracking-uri sqlite:///$PWD/mlflow.db]

Runs are grouped by method (EM also by --clf-weighting); only FINISHED runs count. Prints a
Markdown table: system accuracy, coverage and area under the accuracy-coverage curve, next to the
classifier alone, the calibration errors (ECE of the classifier's top probability, and of each
expert's estimated P(right) where the method makes one) and each expert alone (std over seeds
with ddof = 1). A metric a run did not log at its end (the calibration of runs trained before
l2d measured it) is read from its latest ``l2d train --test`` of the same checkpoint.
"""

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from l2d.evaluation import metrics

COLUMNS = {
    "system accuracy": metrics.ACCURACY,
    "coverage": metrics.COVERAGE,
    "accuracy-coverage AUC": metrics.AUC,
    "classifier alone": metrics.CLF_ACCURACY,
    "classifier ECE": metrics.CLF_ECE,
}


def group_of(params: dict[str, str]) -> str:
    method = params.get("method", "em")
    return f"em, {params['clf_weighting']} weighting" if method == "em" else method


def run_metrics(client: MlflowClient, run) -> dict[str, float]:
    """The run's final metrics, with those only its latest ``--test`` logged."""
    tests = sorted(f.path for f in client.list_artifacts(run.info.run_id, "test"))
    if not tests:
        return dict(run.data.metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run.info.run_id, tests[-1], folder)
        tested = json.loads(Path(path).read_text())["metrics"]
    return {**tested, **run.data.metrics}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} +- {std:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment-name", required=True)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment_name)
    if experiment is None:
        parser.error(f"no experiment {args.experiment_name!r} in {args.tracking_uri}")
    groups = defaultdict(list)
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'"):
        groups[group_of(run.data.params)].append(run)
    if not groups:
        parser.error(f"no FINISHED run in experiment {args.experiment_name!r}")
    first_run = next(iter(groups.values()))[0]
    num_experts = 0
    while metrics.expert_accuracy_alone(num_experts) in first_run.data.metrics:
        num_experts += 1
    experts = {f"expert {k} alone": metrics.expert_accuracy_alone(k) for k in range(num_experts)}
    eces = {f"expert {k} ECE": metrics.expert_ece(k) for k in range(num_experts)}
    columns = {**COLUMNS, **eces, **experts}
    print("| method | seeds | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 2) + "|")
    for group, runs in sorted(groups.items()):
        seeds = sorted(int(run.data.params["seed"]) for run in runs)
        logged = [run_metrics(client, run) for run in runs]
        cells = [mean_std([values[key] for values in logged if key in values])
                 for key in columns.values()]
        print(f"| {group} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
