"""A hundred annotators with mostly missing labels, on CIFAR-10, as one table.

The crowd (``l2d experts --crowd 100 --per-annotator M --accuracy 0.6,0.95``): 100 simulated
annotators, each labelling its own seeded 2% of the training and of the test images, right
with its own accuracy drawn from [0.6, 0.95], a uniformly drawn other class when wrong. About
13% of the images (0.98^100) have no label at all, and 98% of the table is missing.

Compared: EM leaving an absent annotator out (``--missing exclude``) or predicting it
(``--missing model``), softmax, ova and rs over the 100 annotators, and the pooled
single-annotator expert of Mozannar et al. on CIFAR-10H (one label per image drawn from its own
annotators, ``l2d prepare annotations --sample-annotators 1``) with softmax; beside the
classifier alone and the best single annotator (on the test images it labelled). Every network
is NetSimple with Adam at a constant lr of 1e-3, batch 512, 10% of the training images held out
for validation, which selects the epoch and the operating point, as in ``cifar_k.py``.

    python benchmarks/crowd.py --cifar10 ../shared/data/cifar10/cifar10-jpg.tar.gz \\
        --work ../exp/crowd

runs one run after another, skipping runs already in ``WORK/runs.jsonl``, and writes
``WORK/table.md``.
"""

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

from cifar_k import PROTOCOL, l2d, mean_std, prepare
from mlflow import MlflowClient

ANNOTATORS, ACCURACY, SHARE, CROWD_SEED = 100, "0.6,0.95", 0.02, 0
# name -> (method, its flags, the experts: "crowd" or "pooled").
RUNS = {
    "em exclude": ("em", ["--clf-model", "netsimple", "--dfr-model", "netsimple",
                          "--missing", "exclude"], "crowd"),
    "em model": ("em", ["--clf-model", "netsimple", "--dfr-model", "netsimple",
                        "--missing", "model", "--ann-model", "netsimple"], "crowd"),
    "softmax": ("softmax", ["--model", "netsimple"], "crowd"),
    "ova": ("ova", ["--model", "netsimple"], "crowd"),
    "rs": ("rs", ["--model", "netsimple"], "crowd"),
    "pooled S=1 softmax": ("softmax", ["--model", "netsimple"], "pooled"),
}
COLUMNS = {"system accuracy": "accuracy", "coverage": "coverage/test",
           "AUC": "accuracy_coverage/auc", "classifier alone": "clf_accuracy/all"}
EXPERIMENT = "crowd"


def crowd(data: Path) -> dict[str, str]:
    """The crowd's manifests (written once): ``{"train": glob, "test": glob}``."""
    splits = ("train", "test")
    truths = [data / f"{split}_groundtruth.json" for split in splits]
    per_annotator = round(SHARE * len(json.loads(truths[0].read_text())))
    pattern = f"_crowd{ANNOTATORS}_{CROWD_SEED}_a*.json"
    if not list(data.glob("test" + pattern)):
        l2d("experts", "--groundtruth", ",".join(map(str, truths)), "--crowd", str(ANNOTATORS),
            "--per-annotator", str(per_annotator), "--accuracy", ACCURACY,
            "--seed", str(CROWD_SEED))
    return {split: str(data / (split + pattern)) for split in splits}


def pooled(data: Path, work: Path, files: dict[str, str]) -> dict[str, str]:
    """The pooled single-annotator expert, by ``l2d prepare annotations`` from the crowd written
    as one long table (file, annotator, label), once."""
    output = work / "pooled"
    if not (output / "test_pooled_1.json").is_file():
        table = work / "crowd_table.csv"
        with table.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["file", "annotator", "label"])
            for pattern in files.values():
                for manifest in sorted(Path(pattern).parent.glob(Path(pattern).name)):
                    annotator = manifest.stem.rsplit("_", 1)[1]
                    for entry in json.loads(manifest.read_text()):
                        writer.writerow([str(manifest.parent / entry["file"]), annotator,
                                         entry["label"]])
        l2d("prepare", "annotations", str(table), "--output", str(output),
            "--item-column", "file", "--annotator-column", "annotator", "--label-column",
            "label", "--groundtruth",
            f"{data / 'train_groundtruth.json'},{data / 'test_groundtruth.json'}",
            "--sample-annotators", "1", "--seed", str(CROWD_SEED))
    return {split: str(output / f"{split}_pooled_1.json") for split in ("train", "test")}


def train(data: Path, work: Path, name: str, seed: int, epochs: int) -> dict:
    """One run; its record for ``runs.jsonl``."""
    method, flags, experts = RUNS[name]
    files = crowd(data)
    if experts == "pooled":
        files = pooled(data, work, files)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    started = time.perf_counter()
    stderr = l2d("train", "--method", method, *flags, *PROTOCOL, "--allow-missing-annotations",
                 "--num-epochs", str(epochs), "--checkpoint-every", str(epochs),
                 "--seed", str(seed), "--train-files", files["train"],
                 "--train-groundtruth-file", str(data / "train_groundtruth.json"),
                 "--test-files", files["test"],
                 "--test-groundtruth-file", str(data / "test_groundtruth.json"),
                 "--experiment-name", EXPERIMENT, "--run-name", f"{name}-s{seed}",
                 "--tracking-uri", uri, "--artifact-path", str(work / "artifacts"))
    run_id = re.search(r"l2d: run ([0-9a-f]{32})", stderr).group(1)
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    alone = [value for key, value in metrics.items()
             if re.fullmatch(r"selected/expert_\d+/accuracy_alone", key)]
    return {"name": name, "seed": seed, "epochs": epochs, "run_id": run_id,
            "minutes": (time.perf_counter() - started) / 60,
            "selected_epoch": metrics["selected/epoch"],
            **{column: metrics[f"selected/{metric}"] for column, metric in COLUMNS.items()},
            "best annotator": max(alone), "mean annotator": sum(alone) / len(alone)}


def references(data: Path) -> str:
    """What choosing among the annotators present can reach on the test split, from the crowd's
    manifests: a random one per image, or the one most accurate in training."""
    files = crowd(data)
    accuracy, present = {}, {}
    for split in ("train", "test"):
        truth = {e["file"]: e["label"]
                 for e in json.loads((data / f"{split}_groundtruth.json").read_text())}
        for manifest in sorted(Path(files[split]).parent.glob(Path(files[split]).name)):
            annotator = manifest.stem.rsplit("_", 1)[1]
            right = [(e["file"], e["label"] == truth[e["file"]])
                     for e in json.loads(manifest.read_text())]
            if split == "train":
                accuracy[annotator] = sum(r for _, r in right) / len(right)
            else:
                for file, is_right in right:
                    present.setdefault(file, []).append((annotator, is_right))
    labelled = len(present) / len(truth)
    random = sum(sum(r for _, r in v) / len(v) for v in present.values()) / len(present)
    best = sum(max(v, key=lambda a: accuracy[a[0]])[1] for v in present.values()) / len(present)
    return (f"{1 - labelled:.4f} of the test images have no label. On the others, a random "
            f"annotator present is right {random:.3f} of the time, the one most accurate in "
            f"training {best:.3f}; kept images count the classifier's accuracy instead.\n")


def table(records: list[dict]) -> str:
    """A row per run of ``RUNS``: mean +- std over its seeds."""
    columns = [*COLUMNS, "best annotator", "mean annotator"]
    lines = ["| run | seeds | " + " | ".join(columns) + " | minutes per run |",
             "| --- " * (len(columns) + 3) + "|"]
    for name in RUNS:
        runs = [record for record in records if record["name"] == name]
        if runs:
            minutes = sum(run["minutes"] for run in runs) / len(runs)
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(
                mean_std([run[column] for run in runs]) for column in columns)
                + f" | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", required=True,
                        help="CIFAR-10 as an image folder or .tar.gz (train/<class>/, "
                             "test/<class>/)")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder of the manifests, the MLflow store, runs.jsonl, table.md")
    parser.add_argument("--train-per-class", type=int, default=1000,
                        help="training images per class (default: 1000, i.e. 10,000)")
    parser.add_argument("--epochs", type=int, default=5, help="(default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed (default: 0)")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"comma-separated, of: {', '.join(RUNS)} (default: all)")
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    if unknown := set(names) - set(RUNS):
        parser.error(f"--runs: unknown {sorted(unknown)}")
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "runs.jsonl"
    records = ([json.loads(line) for line in log.read_text().splitlines()]
               if log.is_file() else [])
    data = prepare(args.cifar10, args.work, args.train_per_class)
    done = {(r["name"], r["seed"]) for r in records}
    for name in names:
        if (name, args.seed) in done:
            continue
        record = train(data, args.work, name, args.seed, args.epochs)
        records.append(record)
        with log.open("a") as out:
            out.write(json.dumps(record) + "\n")
        print(f"{name}: accuracy {record['system accuracy']:.3f}, coverage "
              f"{record['coverage']:.3f} ({record['minutes']:.1f} min)", flush=True)
    text = table(records) + "\n" + references(data)
    (args.work / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
