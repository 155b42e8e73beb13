"""The CIFAR-K benchmark protocol (Mozannar et al., AISTATS 2023) run with l2d, as one table.

CIFAR-K: CIFAR-10 with one synthetic expert, right on classes 0..k-1 and uniformly random over
the 10 classes elsewhere (``l2d experts --specialist 0-(k-1) --p-in 1.0 --p-out 0.1``, the same
distribution). Every network is NetSimple, trained as the benchmark's ``cifark_exp.py`` trains it:
Adam, a constant lr of 1e-3 (its ``scheduler = None``), no weight decay, batch 512, no
augmentation; 10% of the training images are held out as the
validation split, which selects the epoch (``--select-by val/accuracy``) and the deferral
threshold (``--operating-point best-val``). The test split is CIFAR-10's whole test set.

    python benchmarks/cifar_k.py --cifar10 ../shared/data/cifar10/cifar10-jpg.tar.gz \\
        --work ../exp/cifar-k

runs the reduced protocol (see ``REDUCED``) one run after another, skipping runs already in
``WORK/runs.jsonl`` (so an interrupted benchmark continues where it stopped), and writes
``WORK/table.md``: mean +- std over seeds of system accuracy, coverage, the classifier alone and
the expert alone, beside the published figures. ``--full`` is the published budget (all 50,000
training images, 150 epochs); ``--table-only`` rewrites the table from ``runs.jsonl``.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

# The networks of each method, all NetSimple.
NETWORKS = {
    "em": ["--clf-model", "netsimple", "--dfr-model", "netsimple"],
    "softmax": ["--model", "netsimple"],
    "ova": ["--model", "netsimple"],
    "rs": ["--model", "netsimple"],
    "asm": ["--model", "netsimple"],
    "confidence": ["--clf-model", "netsimple", "--expert-model", "netsimple"],
    "two_stage": ["--clf-model", "netsimple", "--rejector-model", "netsimple"],
    "selective": ["--clf-model", "netsimple"],
}
PROTOCOL = ["--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0", "--lr-schedule",
            "constant", "--batch-size", "512", "--val-fraction", "0.1", "--select-by",
            "val/accuracy", "--operating-point", "best-val", "--no-tqdm"]
# (k, methods, seeds) in the order they run: the first seed of everything, then the others.
REDUCED = [
    (5, list(NETWORKS), [0]),
    (2, ["softmax", "ova", "rs", "confidence"], [0]),
    (8, ["softmax", "ova", "rs", "confidence"], [0]),
    (5, list(NETWORKS), [1, 2]),
]
FULL = [(k, ["softmax", "ova", "rs", "confidence"], [0, 1, 2]) for k in (2, 5, 8)]
# Mozannar et al.'s code as extended by AminChrs/BeyondDefer: 50,000 training images, 150
# epochs, cosine annealing, RS's alpha tuned on validation. System accuracy.
PUBLISHED = {
    ("rs", 2): "0.716", ("rs", 5): "0.794 ± 0.005", ("rs", 8): "0.933",
    ("softmax", 2): "0.707", ("softmax", 5): "0.790 ± 0.003", ("softmax", 8): "0.932",
    ("ova", 2): "0.712", ("ova", 5): "0.788 ± 0.006", ("ova", 8): "0.933",
    ("confidence", 2): "0.714", ("confidence", 5): "0.773 ± 0.006", ("confidence", 8): "0.929",
}
COLUMNS = {"system accuracy": "accuracy", "coverage": "coverage/test",
           "classifier alone": "clf_accuracy/all", "expert alone": "expert_0/accuracy_alone"}
EXPERIMENT = "cifar-k"


def l2d(*args: str) -> str:
    """Run ``python -m l2d ARGS``; its stderr (the run's id is in it)."""
    result = subprocess.run([sys.executable, "-m", "l2d", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"l2d {' '.join(args[:2])} failed:\n{result.stderr[-2000:]}")
    return result.stderr


def prepare(cifar10: str, work: Path, train_per_class: int | None) -> Path:
    """The manifests of CIFAR-10 (all test images, ``train_per_class`` training images per
    class) in ``WORK/data``, once."""
    data = work / "data"
    if not (data / "test_groundtruth.json").is_file():
        l2d("prepare", cifar10, "--output", str(data),
            *(["--train-per-class", str(train_per_class)] if train_per_class else []))
    return data


def expert(data: Path, k: int) -> tuple[str, str]:
    """The CIFAR-K expert's training and test manifests, written once (expert seed 0)."""
    spec = ["--specialist", f"0-{k - 1}", "--p-in", "1.0", "--p-out", "0.1", "--seed", "0"]
    name = f"specialist_0-{k - 1}_1.0_0.1_0.json"
    train, test = data / f"train_{name}", data / f"test_{name}"
    if not train.is_file():
        l2d("experts", "--groundtruth",
            f"{data / 'train_groundtruth.json'},{data / 'test_groundtruth.json'}", *spec)
    return str(train), str(test)


def train(data: Path, work: Path, k: int, method: str, seed: int, epochs: int) -> dict:
    """One run of the protocol; its record for ``runs.jsonl``."""
    train_expert, test_expert = expert(data, k)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    started = time.perf_counter()
    stderr = l2d("train", "--method", method, *NETWORKS[method], *PROTOCOL,
                 "--num-epochs", str(epochs), "--checkpoint-every", str(epochs),
                 "--seed", str(seed), "--train-files", train_expert,
                 "--train-groundtruth-file", str(data / "train_groundtruth.json"),
                 "--test-files", test_expert,
                 "--test-groundtruth-file", str(data / "test_groundtruth.json"),
                 "--expert-names", f"cifar{k}_expert", "--experiment-name", EXPERIMENT,
                 "--run-name", f"k{k}-{method}-s{seed}", "--tracking-uri", uri,
                 "--artifact-path", str(work / "artifacts"))
    run_id = re.search(r"l2d: run ([0-9a-f]{32})", stderr).group(1)
    run = MlflowClient(uri).get_run(run_id)
    return {"k": k, "method": method, "seed": seed, "epochs": epochs, "run_id": run_id,
            "minutes": (time.perf_counter() - started) / 60,
            "selected_epoch": run.data.metrics["selected/epoch"],
            **{name: run.data.metrics[f"selected/{metric}"]
               for name, metric in COLUMNS.items()}}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(records: list[dict]) -> str:
    """The Markdown table of the runs, a row per (k, method), by k and then in the order of
    ``NETWORKS``."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["k"], record["method"]), []).append(record)
    lines = ["| k | method | seeds | " + " | ".join(COLUMNS) + " | published system accuracy |",
             "| --- " * (4 + len(COLUMNS)) + "|"]
    order = list(NETWORKS)
    for (k, method), runs in sorted(groups.items(), key=lambda g: (g[0][0], order.index(g[0][1]))):
        cells = [str(k), method, str(len(runs)),
                 *(mean_std([run[name] for run in runs]) for name in COLUMNS),
                 PUBLISHED.get((method, k), "-")]
        lines.append("| " + " | ".join(cells) + " |")
    minutes = sum(record["minutes"] for record in records)
    return "\n".join(lines) + f"\n\n{len(records)} runs, {minutes:.1f} min of training.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", help="CIFAR-10 as an image folder or .tar.gz "
                        "(train/<class>/, test/<class>/)")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder of the manifests, the MLflow store, runs.jsonl, table.md")
    parser.add_argument("--full", action="store_true",
                        help="the published budget: 50,000 training images, 150 epochs, "
                             "k = 2, 5, 8 with softmax, ova, rs, confidence at 3 seeds")
    parser.add_argument("--train-per-class", type=int, default=1000,
                        help="training images per class of the reduced protocol "
                             "(default: 1000, i.e. 10,000)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs of the reduced protocol (default: 5)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite table.md from runs.jsonl, train nothing")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "runs.jsonl"
    records = ([json.loads(line) for line in log.read_text().splitlines()]
               if log.is_file() else [])
    if not args.table_only:
        if not args.cifar10:
            parser.error("--cifar10 is required unless --table-only")
        epochs = 150 if args.full else args.epochs
        data = prepare(args.cifar10, args.work, None if args.full else args.train_per_class)
        done = {(r["k"], r["method"], r["seed"]) for r in records}
        for k, methods, seeds in FULL if args.full else REDUCED:
            for seed in seeds:
                for method in methods:
                    if (k, method, seed) in done:
                        continue
                    record = train(data, args.work, k, method, seed, epochs)
                    records.append(record)
                    with log.open("a") as out:
                        out.write(json.dumps(record) + "\n")
                    print(f"k={k} {method} seed {seed}: accuracy {record['system accuracy']:.3f}"
                          f", coverage {record['coverage']:.3f} ({record['minutes']:.1f} min)",
                          flush=True)
    text = table(records)
    (args.work / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
