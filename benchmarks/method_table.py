"""Mean +- std over seeds of every method's final test metrics in one MLflow experiment.

    .venv/bin/python benchmarks/method_table.py --experiment-name cifar10-methods \
        [--tracking-uri sqlite:///$PWD/mlflow.db]

Runs are grouped by method (EM also by --clf-weighting); only FINISHED runs count. Prints a
Markdown table: system accuracy, coverage and area under the accuracy-coverage curve, next to the
classifier alone and each expert alone (std over seeds with ddof = 1).
"""

import argparse
import statistics
import sys
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
}


def group_of(params: dict[str, str]) -> str:
    method = params.get("method", "em")
    return f"em, {params['clf_weighting']} weighting" if method == "em" else method


def mean_std(values: list[float]) -> str:
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
    columns = {**COLUMNS, **experts}
    print("| method | seeds | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 2) + "|")
    for group, runs in sorted(groups.items()):
        seeds = sorted(int(run.data.params["seed"]) for run in runs)
        cells = [mean_std([run.data.metrics[key] for run in runs]) for key in columns.values()]
        print(f"| {group} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
