"""Command line: ``l2d COMMAND ...`` (or ``python -m l2d``): parsing and dispatch only.

The train parser is derived from the option declarations (``l2d.config``, ``l2d.methods``).
Imports nothing heavy at module level, so ``--help`` and flag errors answer instantly. Every user
error ends as one line on stderr and exit code 2, without a traceback.
"""

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import l2d
from l2d import __version__, jax_runtime
from l2d.config import (
    METHOD,
    SHARED_GROUPS,
    TEST_WORKLOADS,
    RuntimeOptions,
    TrackingOptions,
    TrainConfig,
    changeable,
    check_method_flags,
)
from l2d.data.expert_files import with_expert_files
from l2d.errors import Interrupted, L2DError, TrainingDiverged
from l2d.methods import METHODS
from l2d.options import Option, default_text, listed
from l2d.run_folder import RunFolder

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130
DEMO_EPOCHS = 15

# ``l2d prepare annotations``: the word that makes ``l2d prepare`` import an annotation table.
ANNOTATIONS = "annotations"
# What ``l2d runs --status`` filters by (MLflow's run statuses).
RUN_STATUSES = ("FINISHED", "RUNNING", "FAILED", "KILLED")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; here a flag error is one line, as every user error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def comma_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def add_option(group, declared: Option) -> None:
    """One declared option as a flag; its value lands under the option's name."""
    declaration = declared.declaration
    default = default_text(declared)
    kwargs = {"dest": declared.name, "help": declaration.help + (
        f" (default: {default})" if default is not None else "")}
    if declared.kind is bool:
        kwargs["action"] = ("store_false" if declaration.negated_flag
                            else argparse.BooleanOptionalAction)
    elif declared.kind is tuple:
        kwargs["type"] = comma_floats if declared.item_kind is float else comma_list
    else:
        kwargs["type"] = declared.kind
    if declaration.choices is not None:
        kwargs["choices"] = declaration.choices
    if declaration.metavar is not None:
        kwargs["metavar"] = declaration.metavar
    group.add_argument(declared.flag, **kwargs)


def method_option_groups() -> list[tuple[str, list[Option]]]:
    """The methods' options grouped by the methods that read them (``--clf-model``: every
    method with a separate classifier), each group titled by its readers, in the registry's
    order; a flag that two options classes declare differently is a programming error of the
    registry."""
    readers: dict[str, list[str]] = {}
    declarations: dict[str, tuple[str, Option]] = {}
    for entry in METHODS.values():
        for declared in entry.options.declared():
            if declared.name in declarations:
                first_class, first = declarations[declared.name]
                if (first.type, first.default, first.declaration) != (
                        declared.type, declared.default, declared.declaration):
                    raise ValueError(f"{declared.flag} is declared differently by "
                                     f"{first_class} and {entry.options.__name__}")
            else:
                declarations[declared.name] = (entry.options.__name__, declared)
            readers.setdefault(declared.name, []).append(entry.name)
    groups: dict[tuple[str, ...], list[Option]] = {}
    for name, methods in readers.items():
        groups.setdefault(tuple(methods), []).append(declarations[name][1])
    return [(method_group_title(methods), declared) for methods, declared in groups.items()]


def method_group_title(methods: tuple[str, ...]) -> str:
    """``every method``, ``method em`` or ``methods em and rs``: the methods reading a group."""
    if set(methods) == set(METHODS):
        return "every method"
    return f"method{'s' if len(methods) > 1 else ''} {listed(methods)}"


def train_option_groups() -> list[tuple[str, list[Option]]]:
    """Every flag of ``l2d train`` that sets an option, by group: the shared groups, then each
    method's (the flags reference of the docs is this list)."""
    return [*((group.title, group.declared()) for group in SHARED_GROUPS),
            *method_option_groups()]


def add_train_parser(commands) -> None:
    """Flags default to SUPPRESS so that the parsed namespace holds only what the user typed;
    defaults come from the declarations (shown in --help)."""
    train = commands.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a deferral system (or --resume / --test an existing run)",
        description="Train a learning-to-defer system (EM, or a surrogate loss) on manifests "
                    "of images, ground truth and expert labels. File lists are comma-separated.")
    methods = train.add_argument_group("method")
    methods.add_argument("--method", dest=METHOD, choices=tuple(METHODS),
                         help="; ".join(f"{name}: {entry.summary}"
                                        for name, entry in METHODS.items())
                         + f" (default: {TrainConfig.method})")
    for title, declared in train_option_groups():
        group = train.add_argument_group(title)
        for item in declared:
            add_option(group, item)
    run = train.add_argument_group("run mode")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--train", dest="mode", action="store_const", const="train",
                      help="train (the default)")
    mode.add_argument("--test", dest="mode", action="store_const", const="test",
                      help="evaluate the latest checkpoint of --run-id on the test manifests")
    run.add_argument("--resume", action="store_true",
                     help="continue --run-id from its latest checkpoint, in the same MLflow run")
    run.add_argument("--run-id", help="MLflow run id for --resume or --test")
    run.add_argument("--register-model", metavar="NAME",
                     help="also register the run's model deferral_system in the MLflow Model "
                          "Registry under NAME (a new version if NAME exists)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="l2d",
        description="Learning to defer to human experts in JAX: EM or a surrogate loss.")
    parser.add_argument("--version", action="version", version=f"l2d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=OneLineErrorParser)
    add_train_parser(commands)
    prepare = commands.add_parser(
        "prepare", help="image folder (one subfolder per class) -> ground-truth manifests",
        description="Write train_groundtruth.json, test_groundtruth.json and classes.json into "
                    "--output from a folder (or .tar.gz archive, unpacked into OUTPUT/images) "
                    "with one subfolder per class. Existing train/ and test/ folders are used "
                    "as the split; otherwise a seeded stratified split with --test-share. Class "
                    "indices follow the sorted folder names: numeric order if every name is an "
                    "integer, else string order; classes.json lists the names by index.")
    prepare.add_argument("source", help="image folder or .tar.gz/.tgz/.tar archive; or "
                         f"'{ANNOTATIONS}' to import an annotation table (l2d prepare "
                         f"{ANNOTATIONS} --help)")
    prepare.add_argument("--output", required=True, help="folder for the manifests")
    prepare.add_argument("--test-share", type=float, default=0.2,
                         help="test share per class when there are no train/test folders "
                              "(default: 0.2)")
    prepare.add_argument("--train-per-class", type=int,
                         help="keep only this many training images per class (seeded choice)")
    prepare.add_argument("--seed", type=int, default=0, help="(default: 0)")
    prepare.add_argument("--num-threads", type=int, default=4,
                         help="image decoding threads (default: 4)")

    experts = commands.add_parser(
        "experts", help="write synthetic expert manifests from ground-truth manifests",
        description="For each ground-truth manifest (e.g. train and test), write one expert "
                    "manifest beside it, e.g. train_random_noise_0.3_44.json, and print the "
                    "expert's measured accuracy. An expert's answer to an image depends only on "
                    "the seed, the expert's definition and the image's path relative to its "
                    "manifest, so the same expert behaves the same on train and test.")
    experts.add_argument("--groundtruth", type=comma_list, required=True,
                         metavar="TRAIN.json,TEST.json", help="ground-truth manifests")
    kind = experts.add_mutually_exclusive_group(required=True)
    kind.add_argument("--noise", type=float, metavar="P",
                      help="label noise: with probability P the label is replaced by a "
                           "uniformly drawn other class (never the true one)")
    kind.add_argument("--specialist", metavar="CLASSES",
                      help="class specialist on CLASSES (e.g. 0-4 or 0,2,7): right with "
                           "probability --p-in on them, --p-out elsewhere, a uniformly drawn "
                           "other class when wrong")
    kind.add_argument("--crowd", type=int, metavar="N",
                      help="a simulated crowd of N annotators, each labelling its own seeded "
                           "--per-annotator images of each manifest, right with its own "
                           "accuracy drawn from --accuracy, a uniformly drawn other class when "
                           "wrong; writes <split>_crowd<N>_<seed>_a<i>.json (train with "
                           "--allow-missing-annotations)")
    experts.add_argument("--per-annotator", type=int, metavar="M",
                         help="--crowd: images each annotator labels per manifest")
    experts.add_argument("--accuracy", type=comma_floats, metavar="LO,HI",
                         help="--crowd: the range of the annotators' accuracies "
                              "(default: 0.6,0.95)")
    experts.add_argument("--p-in", type=float, default=1.0, help="(default: 1.0)")
    experts.add_argument("--p-out", type=float, default=0.1,
                         help="(default: 0.1, uniformly random on 10 classes)")
    experts.add_argument("--num-classes", type=int,
                         help="C (default: largest ground-truth label + 1)")
    experts.add_argument("--seed", type=int, default=0, help="(default: 0)")
    experts.add_argument("--missing-rate", type=float, default=0.0, metavar="R",
                         help="leave out the annotations of a seeded share R of each "
                              "manifest's files (train with --allow-missing-annotations; "
                              "default: 0)")

    plot = commands.add_parser(
        "plot", help="plot runs' metric histories to PNG files",
        description="Read the per-epoch metrics of one or more runs (of any methods) from MLflow "
                    "and write PNGs into --output, one line per run: test accuracy (with the "
                    "classifier alone and each expert alone as reference lines), test and "
                    "training coverage, the accuracy-coverage area, each method's training "
                    "losses, and the latest accuracy-coverage curves in one figure. Nothing is "
                    "logged to the runs unless --log-to-runs is given.")
    plot.add_argument("--run-id", dest="run_ids", action="extend", type=comma_list,
                      required=True, metavar="ID[,ID...]",
                      help="runs to plot (comma-separated or repeated)")
    plot.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file "
                      "mlflow.db in the current folder)")
    plot.add_argument("--output", default="plots", help="folder for the PNGs (default: plots)")
    plot.add_argument("--log-to-runs", dest="log_artifacts", action="store_true",
                      help="also log to each run, under plots/, the plots of that run alone "
                           "(as every training run does at its end)")

    export = commands.add_parser(
        "export", help="log the MLflow model deferral_system of an existing run",
        description="Log the trained system of a run (its latest checkpoint) as the MLflow "
                    "model deferral_system of that run, as every training run now does at its "
                    "end; the run's status stays as it is.")
    export.add_argument("--run-id", required=True, help="the run to export")
    export.add_argument("--register-model", metavar="NAME",
                        help="also register it in the MLflow Model Registry under NAME")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file "
                        "mlflow.db in the current folder)")
    export.add_argument("--artifact-path", default=TrackingOptions.artifact_path,
                        help="folder of <run_id>/config.json and <run_id>/checkpoints "
                             f"(default: {TrackingOptions.artifact_path})")

    predict = commands.add_parser(
        "predict", help="route new images with a run's deferral_system model",
        description="Route every image of a folder or a manifest with the deferral_system "
                    "model of a run and write, per image, the decision (classifier or an "
                    "expert's name), the classifier's label where it keeps the image, and "
                    "every option's score to --output (JSON); print how many images each "
                    "option receives. When the images' true classes are known (a manifest "
                    "with labels, or --images with one subfolder per class named as the run's "
                    "classes), also report coverage and the classifier's accuracy, and, with "
                    "--expert-files, each expert's and the system's accuracy, into "
                    "<output>_metrics.json.")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="every image file under DIR")
    source.add_argument("--manifest", metavar="M.json",
                        help="a manifest [{\"file\": ...}, ...] (labels, if any, are ignored)")
    predict.add_argument("--run-id", required=True, help="the run whose model routes")
    predict.add_argument("--output", required=True, metavar="decisions.json",
                         help="where to write the decisions")
    predict.add_argument("--expert-files", type=comma_list, metavar="A.json,B.json",
                         help="the experts' answers for these images (manifests in the run's "
                              "expert order), for the system's accuracy")
    predict.add_argument("--workload", choices=TEST_WORKLOADS,
                         help="argmax per image, or the whole input within the run's share "
                              "bounds (default: the run's --test-workload)")
    predict.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file "
                         "mlflow.db in the current folder)")

    runs = commands.add_parser(
        "runs", help="list the runs of a tracking store, newest first",
        description="List the runs of the tracking store, newest first: id, status, start, "
                    "name, method, test accuracy and coverage, and whether the run has a "
                    "model to serve. --newest prints only the newest run's id.")
    runs.add_argument("--status", default="FINISHED", choices=[*RUN_STATUSES, "any"],
                      help="runs of this status only (default: FINISHED)")
    runs.add_argument("--experiment-name", help="runs of this experiment only")
    runs.add_argument("--newest", action="store_true",
                      help="print only the id of the newest such run, e.g. "
                           "RUN_ID=$(l2d runs --newest)")
    runs.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file "
                      "mlflow.db in the current folder)")

    demo = commands.add_parser(
        "demo", help="build the digits demo dataset (once) and train on it",
        description="Write scikit-learn's handwritten digits as PNG files with two specialist "
                    "experts (digits 0-4 and 5-9) into --data-dir, unless already there, and "
                    "train a small deferral system on them with the local MLflow store.")
    demo.add_argument("--data-dir", default="demo_data", help="(default: demo_data)")
    demo.add_argument("--num-epochs", type=int, default=DEMO_EPOCHS,
                      help=f"(default: {DEMO_EPOCHS})")
    demo.add_argument("--seed", type=int, default=0, help="(default: 0)")
    return parser


def build_annotations_parser() -> argparse.ArgumentParser:
    """``l2d prepare annotations``: its own parser, as ``l2d prepare`` reads a folder."""
    parser = OneLineErrorParser(
        prog=f"l2d prepare {ANNOTATIONS}",
        description="Import an annotation table (CSV, JSON lines or JSON; one annotation per "
                    "row) or a vote-count matrix into the manifests l2d train reads: "
                    "train_<expert>.json and test_<expert>.json (label null where the expert "
                    "gave none), train_groundtruth.json, test_groundtruth.json, classes.json and "
                    "summary.json in --output. Give the ground truth once and, unless two "
                    "ground-truth manifests split the images, a split.")
    parser.add_argument("table", nargs="?", type=Path, help="the annotation table")
    parser.add_argument("--output", required=True, type=Path, help="folder for the manifests")
    columns = parser.add_argument_group("the table")
    columns.add_argument("--item-column", default="file",
                         help="the image: a path, or an id for --file-pattern (default: file)")
    columns.add_argument("--annotator-column", default="annotator", help="(default: annotator)")
    columns.add_argument("--label-column", default="label",
                         help="a class index or name (default: label)")
    columns.add_argument("--label-columns", type=comma_list, metavar="A,B,C",
                         help="a wide table instead: one label column per annotator, named by "
                              "its column (e.g. Chaoyang's label_A,label_B,label_C)")
    columns.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                         help="keep only the rows where COLUMN has VALUE (or, COLUMN!=VALUE, "
                              "has another); repeatable")
    columns.add_argument("--file-pattern", metavar="PATTERN",
                         help="the image file of an item id {id} and the row's columns, e.g. "
                              "'{id:05d}.png' or 'phase_noise_{noise_level:03d}/{id}.png' "
                              "(default: the item is the file)")
    columns.add_argument("--images-root", type=Path, metavar="DIR",
                         help="folder the image files are relative to (default: the table's)")
    columns.add_argument("--counts", type=Path, metavar="FILE.npy",
                         help="instead of a table: an N x C matrix of votes (only with "
                              "--sample-annotators)")
    columns.add_argument("--order", type=Path, metavar="MANIFEST.json",
                         help="--counts: the manifest whose N images are the matrix's rows")
    columns.add_argument("--classes", type=Path, metavar="classes.json",
                         help="the class names by index (default: classes.json beside the "
                              "ground-truth manifest, else the labels: integers are indices, "
                              "names are sorted)")
    truth = parser.add_argument_group("ground truth and split")
    truth.add_argument("--groundtruth-column", metavar="COLUMN",
                       help="the true class of each row's image")
    truth.add_argument("--groundtruth", metavar="TRAIN.json[,TEST.json]|majority",
                       help="existing ground-truth manifests (two: they split the images), "
                            "or 'majority': each image's most frequent label, the smallest "
                            "class index among a tie")
    truth.add_argument("--split-column", metavar="COLUMN",
                       help="the split of each row's image, one of --split-values")
    truth.add_argument("--split-values", type=comma_list, default=("train", "test"),
                       metavar="TRAIN,TEST", help="the --split-column values of the training "
                       "and the test split (default: train,test)")
    truth.add_argument("--test-fraction", type=float, metavar="F",
                       help="a stratified, seeded split with this test share per class")
    experts = parser.add_argument_group("experts")
    experts.add_argument("--min-annotations", type=int, metavar="N",
                         help="every annotator with at least N labels (default: 1)")
    experts.add_argument("--top-annotators", type=int, metavar="N",
                         help="only the N most prolific of those (ties by name)")
    experts.add_argument("--sample-annotators", type=int, metavar="S",
                         help="S pooled experts instead: each image's labels drawn without "
                              "replacement from its own annotators (S = 1: the CIFAR-10H "
                              "protocol)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the split and the draws of --sample-annotators (default: 0)")
    return parser


def run_annotations_command(args: dict) -> None:
    from l2d.data.import_annotations import SUMMARY_FILE, ImportOptions, import_annotations

    summary = import_annotations(ImportOptions(**{**args, "where": tuple(args["where"])}))
    images = summary["images"]
    experts = summary["experts"]
    print(f"{len(experts)} experts, {summary['classes']} classes, {images['train']} training "
          f"and {images['test']} test images; ground truth: {summary['groundtruth']}")
    shown = sorted(experts, key=lambda e: -e["labels"])[:10]
    for expert in shown:
        print(f"  {expert['name']}: {expert['labels']} labels, agreement "
              f"{expert['agreement']:.3f} with the ground truth, missing {expert['missing']:.1%}")
    if len(experts) > len(shown):
        print(f"  ... and {len(experts) - len(shown)} more (the most prolific shown)")
    if summary["rows_left_out"] or summary["labels_empty"]:
        print(f"{summary['rows_left_out']} rows left out by --where, {summary['labels_empty']} "
              "empty labels skipped")
    print("images by number of labels: " + ", ".join(
        f"{n}: {count}" for n, count in summary["images_by_number_of_labels"].items()))
    print(args["output"] / SUMMARY_FILE)


def run_train_command(given: dict) -> None:
    mode = given.pop("mode", "train")
    resume = given.pop("resume", False)
    run_id = given.pop("run_id", None)
    register_model = given.pop("register_model", None)
    check_model_name(register_model)
    if mode == "test" and resume:
        raise L2DError("--resume and --test exclude each other")
    if mode == "test" and register_model:
        raise L2DError("--register-model: only when training (l2d export registers an existing "
                       "run's model)")
    if (resume or mode == "test") and not run_id:
        raise L2DError(f"--{'resume' if resume else 'test'} needs --run-id")
    if run_id and not (resume or mode == "test"):
        raise L2DError(f"--run-id={run_id}: only used with --resume or --test")
    if resume or mode == "test":
        folder = RunFolder.of(given.get("artifact_path", TrackingOptions.artifact_path), run_id)
        given = with_expert_files(given, folder.load_config().to_dict())
        config = folder.stored_config(given, changeable=changeable(testing=mode == "test"))
    else:
        given = with_expert_files(given)
        # Values first, then whose flags they are: a bad value is named before a misplaced flag.
        config = TrainConfig.from_dict(given, strict=False)
    config.validate()
    check_method_flags(given, config)
    if mode == "test":
        report(l2d.evaluate_run(config, run_id), config, "test metrics")
    else:
        result = l2d.train(config, resume_run_id=run_id, register_model=register_model)
        if config.runtime.process_id == 0:
            report(result.metrics, config, "final test metrics")


def report(metrics: dict[str, float], config: TrainConfig, what: str) -> None:
    """The human summary of the test metrics, then every metric on one line."""
    from l2d.evaluation.metrics import metrics_line, summary

    print(f"{summary(metrics, config.data.experts())}\nl2d: {what}: {metrics_line(metrics)}")


def check_model_name(name: str | None) -> None:
    """The MLflow Model Registry's rule, checked before hours of training rather than after."""
    if name is not None and (not name.strip() or "/" in name or ":" in name):
        raise L2DError(f"--register-model={name!r}: a registered model's name is not empty and "
                       "has no '/' or ':'")


def run_export_command(args: dict) -> None:
    from l2d.tracking import open_run_store

    check_model_name(args["register_model"])
    tracker = open_run_store(args["tracking_uri"], args["run_id"])
    folder = RunFolder.of(args["artifact_path"], args["run_id"])
    # One process reads the checkpoint, whatever the run was trained on.
    config = folder.load_config().replace(coordinator_address=None, num_processes=1,
                                          process_id=0)
    jax_runtime.start_jax(config.runtime)
    from l2d.serving.export import export

    uri = export(config, folder, tracker, register_model=args["register_model"])
    print(f"{uri}" + (f" (registered as {args['register_model']})"
                      if args["register_model"] else ""))


def run_predict_command(args: dict) -> None:
    from l2d.tracking import open_run_store

    tracker = open_run_store(args["tracking_uri"], args["run_id"])
    source = args["images"] or args["manifest"]
    jax_runtime.start_jax(RuntimeOptions())
    from l2d.serving import predict
    from l2d.serving.pyfunc import load_trained_system

    system = load_trained_system(tracker.uri, args["run_id"])
    if args["images"] is not None:
        files, labels = predict.image_files_in(Path(source), system.classes)
    else:
        files, labels = predict.image_files_of_manifest(Path(source))
    answers = (predict.expert_answers(args["expert_files"], files, len(system.experts))
               if args["expert_files"] else None)
    if answers is not None and labels is None:
        raise L2DError(f"--expert-files: {source} gives no true classes to score them against")
    routing = predict.route_files(system, files, source, workload=args["workload"],
                                  progress=None)
    table = system.rows(routing)
    output = Path(args["output"])
    predict.write_decisions(output, files, table, system.options)
    print(f"{len(files)} images: {predict.summary(table, system.options)}; "
          f"decisions in {output}")
    if labels is not None:
        scores = predict.labelled_metrics(routing, labels, answers, system.experts)
        path = predict.write_metrics(output, scores)
        print(f"{predict.describe_metrics(scores, system.experts)}; in {path}")


def run_prepare_command(args: dict) -> None:
    from l2d.data.prepare import prepare_dataset

    result = prepare_dataset(Path(args["source"]), Path(args["output"]),
                             test_share=args["test_share"], seed=args["seed"],
                             num_threads=args["num_threads"],
                             train_per_class=args["train_per_class"])
    print(f"{result['layout']}: {result['num_train']} training and {result['num_test']} test "
          f"images of shape {result['image_shape']}, {result['num_classes']} classes"
          + (f"; {result['ignored_files']} other files ignored" if result["ignored_files"] else ""))
    for key in ("train_groundtruth", "test_groundtruth", "classes"):
        print(result[key])


def run_experts_command(args: dict) -> None:
    from l2d.data.experts import ExpertSpec, write_experts

    crowd_flags = [flag for flag in ("per_annotator", "accuracy") if args[flag] is not None]
    if args["crowd"] is not None:
        run_crowd_command(args)
        return
    if crowd_flags:
        raise L2DError(f"--{crowd_flags[0].replace('_', '-')}: only used with --crowd")
    if args["noise"] is not None:
        spec = ExpertSpec.noise(args["noise"])
    else:
        spec = ExpertSpec.specialist(args["specialist"], args["p_in"], args["p_out"])
    for result in write_experts(list(args["groundtruth"]), spec, seed=args["seed"],
                                num_classes=args["num_classes"],
                                missing_rate=args["missing_rate"]):
        detail = "".join(f", {key.replace('_', ' ')} {result[key]:.4f}"
                         for key in ("accuracy_in", "accuracy_out") if result.get(key) is not None)
        missing = f" ({result['num_missing']} left without one)" if result["num_missing"] else ""
        print(f"{result['path']}: accuracy {result['accuracy']:.4f} on "
              f"{result['num_samples']} annotated images{missing}{detail}")


def run_crowd_command(args: dict) -> None:
    from l2d.data.crowd import write_crowd

    if args["per_annotator"] is None:
        raise L2DError("--crowd: needs --per-annotator M, the images each annotator labels")
    if args["missing_rate"]:
        raise L2DError("--missing-rate: not with --crowd, whose annotators label only "
                       "--per-annotator images each")
    for result in write_crowd(list(args["groundtruth"]), num_annotators=args["crowd"],
                              per_annotator=args["per_annotator"],
                              accuracy=args["accuracy"] or (0.6, 0.95), seed=args["seed"],
                              num_classes=args["num_classes"]):
        accuracy = result["accuracy"]
        mean = sum(accuracy) / len(accuracy)
        print(f"{result['files']}: {result['annotators']} annotators, "
              f"{result['per_annotator']} of {result['num_samples']} images each, accuracy "
              f"{min(accuracy):.3f}-{max(accuracy):.3f} (mean {mean:.3f}); "
              f"{result['covered']} images have at least one label")


def run_plot_command(args: dict) -> None:
    from l2d.evaluation.plot import plot_runs
    from l2d.tracking import open_store, resolve_tracking_uri

    paths = plot_runs(open_store(resolve_tracking_uri(args["tracking_uri"])), args["run_ids"],
                      Path(args["output"]), log_artifacts=args["log_artifacts"])
    print("\n".join(str(path) for path in paths))


def run_runs_command(args: dict) -> None:
    from l2d import runs
    from l2d.tracking import open_store, resolve_tracking_uri

    tracker = open_store(resolve_tracking_uri(args["tracking_uri"]))
    status = None if args["status"] == "any" else args["status"]
    found = tracker.search_runs(status=status, experiment_name=args["experiment_name"])
    if args["newest"]:
        if not found:
            raise L2DError(f"no {status or ''} run in {tracker.uri}".replace("  ", " "))
        print(found[0].info.run_id)
    else:
        print(runs.table(found))


def run_demo_command(args: dict) -> None:
    from l2d.data.demo import build_demo_dataset, demo_config, demo_manifests

    folder = Path(args["data_dir"]).resolve()
    manifests = demo_manifests(folder, seed=args["seed"])
    if manifests is None:
        print(f"l2d: writing the digits demo dataset to {folder}", file=sys.stderr)
        manifests = build_demo_dataset(folder, seed=args["seed"])
    config = demo_config(manifests, num_epochs=args["num_epochs"], seed=args["seed"])
    result = l2d.train(config)
    from l2d.evaluation.metrics import summary
    from l2d.tracking import UI_ADDRESS, resolve_tracking_uri

    print(f"{summary(result.metrics, config.data.experts())}\nsee the run: mlflow ui "
          f"--backend-store-uri {resolve_tracking_uri(None)} then open {UI_ADDRESS}")


def interrupted_message(interrupted: Interrupted, args: dict) -> str:
    """What an interrupted run says: its id, what was saved, and the command that continues it."""
    run_id = interrupted.run_id
    if not run_id:
        return "l2d: interrupted before a run was started"
    if interrupted.saved is None:
        return (f"l2d: interrupted: run {run_id} is KILLED, nothing saved since its last "
                f"checkpoint (if any); continue it with: {resume_command(run_id, args)}")
    return (f"l2d: interrupted: run {run_id} is KILLED and {interrupted.saved}\n"
            f"l2d: continue it with: {resume_command(run_id, args)}")


def resume_command(run_id: str, args: dict) -> str:
    """The command that resumes ``run_id``, from the folder it was started in: as it was
    launched (``run.sh`` sets ``L2D_LAUNCHER``), with the flags that say where the run is."""
    launcher = os.environ.get("L2D_LAUNCHER")
    if launcher:
        command = [launcher]
    elif Path(sys.argv[0]).name == "l2d":
        command = ["l2d", "train"]
    else:
        command = [sys.executable, "-m", "l2d", "train"]
    command += ["--resume", "--run-id", run_id]
    for name in ("tracking_uri", "artifact_path"):
        if args.get(name) is not None:
            command += [f"--{name.replace('_', '-')}", args[name]]
    return shlex.join(command)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["prepare", ANNOTATIONS]:
        args, command = vars(build_annotations_parser().parse_args(argv[2:])), ANNOTATIONS
    else:
        args = vars(build_parser().parse_args(argv))
        command = args.pop("command")
    try:
        if command == ANNOTATIONS:
            run_annotations_command(args)
        elif command == "train":
            run_train_command(args)
        elif command == "demo":
            run_demo_command(args)
        elif command == "plot":
            run_plot_command(args)
        elif command == "export":
            run_export_command(args)
        elif command == "predict":
            run_predict_command(args)
        elif command == "prepare":
            run_prepare_command(args)
        elif command == "experts":
            run_experts_command(args)
        elif command == "runs":
            run_runs_command(args)
    except L2DError as error:
        print(f"l2d: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as error:
        print(f"l2d: error: training diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as interrupted:
        print(interrupted_message(interrupted, args), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("l2d: interrupted; any started run is marked KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
