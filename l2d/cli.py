"""Command line: ``python -m l2d train ...``. Parses flags, builds a config, calls one function.

Imports nothing heavy at module level, so ``--help`` and flag errors answer instantly. Every user
error ends as one line on stderr and exit code 2, without a traceback.
"""

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from l2d import __version__
from l2d.config import (
    CLF_WEIGHTINGS,
    COMPUTE_DTYPES,
    E_STEPS,
    METHOD_FIELDS,
    METHOD_NAMES,
    MISSING_MODES,
    MODEL_NAMES,
    RUNTIME_FIELDS,
    TEST_WORKLOADS,
    TrainConfig,
)
from l2d.errors import Interrupted, L2DError, TrainingDiverged, first_line

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130
DEMO_EPOCHS = 15
# The demo's EM (README, "The demo"): the classifier learns from every input, since weighting it
# by its posterior starves it into a collapse to coverage 0, and each expert takes at most 40% of
# the inputs, so the classifier keeps the share it is good at.
DEMO_DEFERRAL = {"clf_weighting": "uniform", "max_share": (0.4, 0.4, 1.0)}

# What ``l2d runs --status`` filters by (MLflow's run statuses).
RUN_STATUSES = ("FINISHED", "RUNNING", "FAILED", "KILLED")

# Flags a --test run may change besides the runtime ones: which test manifests to evaluate on.
TEST_OVERRIDABLE = frozenset({"test_files", "test_groundtruth_file", "batch_size",
                              "test_workload", "allow_missing_annotations"})


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


def build_parser() -> argparse.ArgumentParser:
    """Flags default to SUPPRESS so that the parsed namespace holds only what the user typed;
    defaults come from TrainConfig (shown in --help)."""
    parser = OneLineErrorParser(
        prog="l2d",
        description="Learning to defer to human experts in JAX: EM or a surrogate loss.")
    parser.add_argument("--version", action="version", version=f"l2d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=OneLineErrorParser)
    train = commands.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train a deferral system (or --resume / --test an existing run)",
        description="Train a learning-to-defer system (EM, or a surrogate loss) on manifests "
                    "of images, ground truth and expert labels. File lists are comma-separated.")
    defaults = TrainConfig()

    def add(group, flag: str, help: str, **kwargs) -> None:
        field = flag.lstrip("-").replace("-", "_")
        default = getattr(defaults, kwargs.get("dest", field), None)
        if default not in (None, "", ()) and kwargs.get("action") != "store_false":
            help = f"{help} (default: {default})"
        group.add_argument(flag, help=help, **kwargs)

    data = train.add_argument_group("data")
    data.add_argument("--train-files", type=comma_list, metavar="A.json,B.json",
                      help="expert manifests of the training split, one per expert")
    data.add_argument("--train-groundtruth-file", metavar="GT.json",
                      help="ground-truth manifest of the training split")
    data.add_argument("--test-files", type=comma_list, metavar="A.json,B.json",
                      help="expert manifests of the test split, same experts in the same order")
    data.add_argument("--test-groundtruth-file", metavar="GT.json",
                      help="ground-truth manifest of the test split")
    add(data, "--expert-names", "the experts' names, in --train-files order, in the summary, "
        "plots, decisions and the served model's columns (default: the training manifests' "
        "file names)", type=comma_list, metavar="A,B")
    add(data, "--num-classes", "number of classes; inferred from the training labels when omitted",
        type=int)
    add(data, "--augment", "4-pixel pad + random crop + horizontal flip of training images",
        action=argparse.BooleanOptionalAction)
    add(data, "--norm-mean", "per-channel mean of pixels in [0,1]; computed from the training set "
        "when omitted", type=comma_floats)
    add(data, "--norm-std", "per-channel std, given together with --norm-mean", type=comma_floats)
    add(data, "--stream-from-disk", "decode images from disk every epoch instead of keeping "
        "them in memory (for datasets larger than RAM)", dest="cache_images", action="store_false")
    add(data, "--prefetch-size", "batches prepared ahead of the training step", type=int)
    add(data, "--num-threads", "image decoding threads", type=int)

    model = train.add_argument_group("method and models")
    add(model, "--method", "em: classifier + gate trained by EM; softmax or ova: one network "
        "with C + K outputs trained by that surrogate loss", choices=METHOD_NAMES)
    add(model, "--clf-model", "em: classifier network", choices=MODEL_NAMES)
    add(model, "--clf-width", "em: classifier width (cnn: 32 channels by default, "
        "preact_resnet10: 64)", type=int)
    add(model, "--dfr-model", "em: gating (deferral) network", choices=MODEL_NAMES)
    add(model, "--dfr-width", "em: gating network base width (preact_resnet10: 64 by default, "
        "cnn: 32)", type=int)
    add(model, "--e-step", "em: posterior of the E-step, exact or Monte Carlo samples",
        choices=E_STEPS)
    add(model, "--mc-samples", "em: samples of z per input for --e-step mc", type=int)
    add(model, "--expert-smoothing", "em: label smoothing eps of expert annotations in "
        "p(y | expert)", type=float)
    add(model, "--clf-weighting", "em: classifier loss weights, q(classifier) or uniform",
        choices=CLF_WEIGHTINGS)
    add(model, "--max-share", "K + 1 comma-separated numbers, the experts in --train-files "
        "order then the classifier: the largest share of each option, in each batch of EM's "
        "E-step and, with --test-workload enforce, in the test split (any method)",
        type=comma_floats)
    add(model, "--min-share", "K + 1 numbers as --max-share: the smallest shares",
        type=comma_floats)
    add(model, "--test-workload", "test-time routing, the highest score per input or the "
        "whole split assigned at once within the share bounds", choices=TEST_WORKLOADS)
    add(model, "--allow-missing-annotations", "em: expert manifests may omit files or give "
        "\"label\": null", action=argparse.BooleanOptionalAction)
    add(model, "--missing", "em: a missing annotation leaves the expert out of that input "
        "(exclude) or is predicted by an annotation network (model)", choices=MISSING_MODES)
    add(model, "--ann-model", "em, --missing model: the annotation network p(t_k | x)",
        choices=MODEL_NAMES)
    add(model, "--ann-width", "em, --missing model: annotation network width", type=int)
    add(model, "--model", "softmax, ova: the network", choices=MODEL_NAMES)
    add(model, "--width", "softmax, ova: network base width (preact_resnet10: 64 by default, "
        "cnn: 32)", type=int)
    add(model, "--lr", "initial learning rate (cosine decay to 0)", type=float)
    add(model, "--momentum", "SGD momentum", type=float)
    add(model, "--weight-decay", "weight decay on kernels (not biases or norm scales)", type=float)
    add(model, "--batch-size", "training and evaluation batch size", type=int)
    add(model, "--num-epochs", "training epochs", type=int)
    add(model, "--seed", "seed of initialisation, data order, augmentation and MC draws", type=int)

    run = train.add_argument_group("run, tracking and checkpoints")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--train", dest="mode", action="store_const", const="train",
                      help="train (the default)")
    mode.add_argument("--test", dest="mode", action="store_const", const="test",
                      help="evaluate the latest checkpoint of --run-id on the test manifests")
    run.add_argument("--resume", action="store_true",
                     help="continue --run-id from its latest checkpoint, in the same MLflow run")
    run.add_argument("--run-id", help="MLflow run id for --resume or --test")
    add(run, "--experiment-name", "MLflow experiment")
    add(run, "--run-name", "MLflow run name (default: one MLflow makes up)")
    add(run, "--run-description", "free text shown with the run in MLflow")
    add(run, "--tracking-uri", "MLflow tracking URI, e.g. http://127.0.0.1:8080 (default: "
        "sqlite file mlflow.db in the current folder)")
    add(run, "--artifact-path", "folder for <run_id>/config.json and <run_id>/checkpoints")
    run.add_argument("--register-model", metavar="NAME",
                     help="also register the run's model deferral_system in the MLflow Model "
                          "Registry under NAME (a new version if NAME exists)")
    add(run, "--checkpoint-every", "save a checkpoint every N epochs and after the last", type=int)
    add(run, "--keep-checkpoints", "newest checkpoints kept per run", type=int)
    add(run, "--jax-platform", "JAX platform: cpu, cuda, ... (default: JAX's choice)")
    add(run, "--mem-frac", "share of GPU memory JAX preallocates", type=float)
    add(run, "--tqdm", "progress bars (silent anyway when output is not a terminal)",
        action=argparse.BooleanOptionalAction)
    add(run, "--compute-dtype", "activations and matrix products in bfloat16 (accelerators) or "
        "float32; parameters stay float32", choices=COMPUTE_DTYPES)
    add(run, "--compilation-cache", "JAX's persistent compilation cache (a second launch skips "
        "compiling)", action=argparse.BooleanOptionalAction)
    add(run, "--compilation-cache-dir", "folder of the compilation cache (default: "
        "$XDG_CACHE_HOME or ~/.cache, then l2d/jax)")
    add(run, "--coordinator-address", "multi-host: HOST:PORT of process 0, for "
        "jax.distributed.initialize")
    add(run, "--num-processes", "multi-host: number of processes", type=int)
    add(run, "--process-id", "multi-host: this process's index, 0 to --num-processes - 1",
        type=int)
    prepare = commands.add_parser(
        "prepare", help="image folder (one subfolder per class) -> ground-truth manifests",
        description="Write train_groundtruth.json, test_groundtruth.json and classes.json into "
                    "--output from a folder (or .tar.gz archive, unpacked into OUTPUT/images) "
                    "with one subfolder per class. Existing train/ and test/ folders are used "
                    "as the split; otherwise a seeded stratified split with --test-share. Class "
                    "indices follow the sorted folder names: numeric order if every name is an "
                    "integer, else string order; classes.json lists the names by index.")
    prepare.add_argument("source", help="image folder or .tar.gz/.tgz/.tar archive")
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
    export.add_argument("--artifact-path", default=TrainConfig.artifact_path,
                        help="folder of <run_id>/config.json and <run_id>/checkpoints "
                             f"(default: {TrainConfig.artifact_path})")

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


def configure_jax_environment(config: TrainConfig) -> None:
    """Must run before jax is imported: platform and memory flags are read at import."""
    if config.jax_platform:
        os.environ["JAX_PLATFORMS"] = config.jax_platform
    if config.mem_frac is not None:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(config.mem_frac)


def default_compilation_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "l2d" / "jax"


def start_jax(config: TrainConfig) -> None:
    """Join the other processes (multi-host), switch on the compilation cache, check devices."""
    configure_jax_environment(config)
    import jax

    if config.coordinator_address is not None:
        # CPU processes exchange gradients through gloo (the default has no cross-process path).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(config.coordinator_address, config.num_processes,
                                       config.process_id)
        except (RuntimeError, ValueError) as error:
            line = first_line(error)
            raise L2DError(f"--coordinator-address={config.coordinator_address}: cannot join "
                           f"the other processes: {line}") from None
    if config.compilation_cache:
        folder = Path(config.compilation_cache_dir or default_compilation_cache()).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # JAX would silently compile without the cache: say so instead.
            raise L2DError(f"--compilation-cache-dir={folder}: cannot create it "
                           f"({error.strerror})") from None
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # Cache every program: l2d's many small ones (initialisation, evaluation) add up too.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        jax.devices()
    except RuntimeError as error:
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise L2DError(f"--jax-platform={config.jax_platform}: {line}") from None


def stored_config(given: dict, run_id: str, *, allowed: frozenset[str]) -> TrainConfig:
    """The run's saved config, with the flags in ``allowed`` taken from the command line.

    Any other flag typed with a value different from the run's is an error: a resumed run must
    continue exactly, and a silently ignored flag would lie.
    """
    artifact_path = given.get("artifact_path", TrainConfig().artifact_path)
    path = Path(artifact_path).expanduser().resolve() / run_id / "config.json"
    if not path.is_file():
        raise L2DError(f"--run-id={run_id}: no {path} (is --artifact-path right?)")
    stored = TrainConfig.load(path)
    for name, value in given.items():
        if name not in allowed and getattr(stored, name) != value:
            # The cosine schedule spans the epochs set at the start: more epochs would change
            # every step's learning rate, so the numbers would match neither run.
            why = ("; the learning rate decays over the epochs the run was started with, so a "
                   "longer training is a new run" if name == "num_epochs" else "")
            raise L2DError(
                f"--{name.replace('_', '-')}={value}: run {run_id} was trained with "
                f"{getattr(stored, name)}{why}; omit the flag to use the run's value")
    return dataclasses.replace(stored, **{k: v for k, v in given.items() if k in allowed})


def check_method_flags(given: dict, config: TrainConfig) -> None:
    """A flag that only another method, or another mode of EM, reads is an error, not silently
    ignored."""
    unused = config.unused_fields()
    for name in (name for name in given if name in unused):
        owners = [method for method, fields in METHOD_FIELDS.items() if name in fields]
        raise L2DError(f"--{name.replace('_', '-')}: only used by --method "
                       f"{' or '.join(owners)}, not by --method {config.method}")
    bounds = [name for name in ("max_share", "min_share") if name in given]
    if bounds and config.method != "em" and config.test_workload != "enforce":
        # EM's E-step reads the bounds in training; the other methods only route by them.
        raise L2DError(f"--{bounds[0].replace('_', '-')}: --method {config.method} uses the "
                       "bounds only with --test-workload enforce")
    if "missing" in given and not config.allow_missing_annotations:
        raise L2DError(f"--missing={config.missing}: only with --allow-missing-annotations")
    for name in ("ann_model", "ann_width"):
        if name in given and config.missing != "model":
            raise L2DError(f"--{name.replace('_', '-')}: only used with --missing model")


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
    if resume:
        config = stored_config(given, run_id, allowed=RUNTIME_FIELDS)
    elif mode == "test":
        config = stored_config(given, run_id, allowed=RUNTIME_FIELDS | TEST_OVERRIDABLE)
    else:
        config = TrainConfig(**given)
    config.validate()
    check_method_flags(given, config)
    start_jax(config)
    from l2d import train  # Heavy (jax, flax, mlflow): only once the flags are known to be good.

    if mode == "test":
        report(train.test(config, run_id), config, "test metrics")
    else:
        metrics = train.train(config, resume_run_id=run_id, register_model=register_model)
        if config.process_id == 0:
            report(metrics, config, "final test metrics")


def report(metrics: dict[str, float], config: TrainConfig, what: str) -> None:
    """The human summary of the test metrics, then every metric on one line."""
    from l2d.config import expert_names
    from l2d.metrics import metrics_line, summary

    print(f"{summary(metrics, expert_names(config))}\nl2d: {what}: {metrics_line(metrics)}")


def open_tracking_store(uri: str | None, run_id: str):
    """The tracker of an existing store that holds ``run_id``."""
    from l2d.plot import open_store
    from l2d.tracking import resolve_tracking_uri

    tracker = open_store(resolve_tracking_uri(uri))
    if not tracker.run_exists(run_id):
        raise L2DError(f"--run-id={run_id}: no such run in {tracker.uri}")
    return tracker


def check_model_name(name: str | None) -> None:
    """The MLflow Model Registry's rule, checked before hours of training rather than after."""
    if name is not None and (not name.strip() or "/" in name or ":" in name):
        raise L2DError(f"--register-model={name!r}: a registered model's name is not empty and "
                       "has no '/' or ':'")


def run_export_command(args: dict) -> None:
    check_model_name(args["register_model"])
    tracker = open_tracking_store(args["tracking_uri"], args["run_id"])
    config = stored_config({"artifact_path": args["artifact_path"]}, args["run_id"],
                           allowed=RUNTIME_FIELDS)
    # One process reads the checkpoint, whatever the run was trained on.
    config = dataclasses.replace(config, coordinator_address=None, num_processes=1,
                                 process_id=0)
    start_jax(config)
    from l2d.export import export

    uri = export(config, args["run_id"], tracker, register_model=args["register_model"])
    print(f"{uri}" + (f" (registered as {args['register_model']})"
                      if args["register_model"] else ""))


def run_predict_command(args: dict) -> None:
    tracker = open_tracking_store(args["tracking_uri"], args["run_id"])
    source = args["images"] or args["manifest"]
    start_jax(TrainConfig())
    from l2d import predict
    from l2d.mlflow_model import load_trained_system

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


def run_plot_command(args: dict) -> None:
    from l2d.plot import plot_runs
    from l2d.tracking import resolve_tracking_uri

    paths = plot_runs(resolve_tracking_uri(args["tracking_uri"]), args["run_ids"],
                      Path(args["output"]), log_artifacts=args["log_artifacts"])
    print("\n".join(str(path) for path in paths))


def run_runs_command(args: dict) -> None:
    from l2d import runs
    from l2d.plot import open_store
    from l2d.tracking import resolve_tracking_uri

    tracker = open_store(resolve_tracking_uri(args["tracking_uri"]))
    status = None if args["status"] == "any" else args["status"]
    found = runs.search(tracker, status=status, experiment_name=args["experiment_name"])
    if args["newest"]:
        if not found:
            raise L2DError(f"no {status or ''} run in {tracker.uri}".replace("  ", " "))
        print(found[0].info.run_id)
    else:
        print(runs.table(found))


def run_demo_command(args: dict) -> None:
    from l2d.data.demo import build_demo_dataset, demo_manifests

    folder = Path(args["data_dir"]).resolve()
    manifests = demo_manifests(folder, seed=args["seed"])
    if manifests is None:
        print(f"l2d: writing the digits demo dataset to {folder}", file=sys.stderr)
        manifests = build_demo_dataset(folder, seed=args["seed"])
    config = TrainConfig(
        experiment_name="l2d-demo", run_description="digits demo, two specialist experts",
        train_files=tuple(manifests["train_experts"]),
        train_groundtruth_file=manifests["train_groundtruth"],
        test_files=tuple(manifests["test_experts"]),
        test_groundtruth_file=manifests["test_groundtruth"],
        expert_names=("digits_0-4", "digits_5-9"),
        clf_width=8, dfr_width=8, batch_size=64, lr=0.05, num_epochs=args["num_epochs"],
        seed=args["seed"], **DEMO_DEFERRAL,
    ).validate()
    start_jax(config)
    from l2d import train
    from l2d.config import expert_names
    from l2d.metrics import summary
    from l2d.tracking import UI_ADDRESS

    metrics = train.train(config)
    print(f"{summary(metrics, expert_names(config))}\nsee the run: mlflow ui "
          f"--backend-store-uri {train.resolve_tracking_uri(None)} then open {UI_ADDRESS}")


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
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    try:
        if command == "train":
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
