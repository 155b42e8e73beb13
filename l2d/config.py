"""The configuration of a training run: the shared option groups, the method's own options
(``l2d.methods``), and ``TrainConfig``, which holds one of each and is checked once by
``validate()``.

The groups are declared with ``l2d.options.option``; a layer is handed the group (or the values)
it reads, never the whole configuration. ``config.json`` and the MLflow params are the flat
``{flag name: value}`` of every group and the method's options (``TrainConfig.to_dict``), the
format every run of l2d has written, so that older runs load as they are.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from l2d.errors import L2DError
from l2d.methods import METHODS, registered
from l2d.options import (
    ANY_TIME,
    ON_TEST,
    Option,
    Options,
    check_at_least,
    check_positive_number,
    derived,
    flag_of,
    invalid,
    listed,
    option,
)

COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant")
TEST_WORKLOADS = ("argmax", "enforce")
# The option of an input the classifier keeps; the other options are the experts, by name.
CLASSIFIER = "classifier"
# --select-by: the last epoch, or a validation metric -> whether higher values are better.
LAST_EPOCH = "last"
SELECTABLE_METRICS = {"val/accuracy": True, "val/accuracy_coverage/auc": True,
                      "val/clf_accuracy/all": True, "val/calibration/classifier/ece": False}
SELECTABLE = (LAST_EPOCH, *SELECTABLE_METRICS)
# --operating-point: offset 0, the best validation accuracy, or a validation coverage.
DEFAULT_POINT = "default"
BEST_VAL = "best-val"
COVERAGE_POINT = "coverage="


def parse_operating_point(text: str) -> float | str:
    """``default`` or ``best-val`` as they are, ``coverage=X`` as the float X in [0, 1];
    ValueError saying what is expected otherwise."""
    if text in (DEFAULT_POINT, BEST_VAL):
        return text
    expected = f"expected {DEFAULT_POINT}, {BEST_VAL} or coverage=X with X in [0, 1]"
    if not text.startswith(COVERAGE_POINT):
        raise ValueError(expected)
    try:
        coverage = float(text[len(COVERAGE_POINT):])
    except ValueError:
        raise ValueError(expected) from None
    if not 0 <= coverage <= 1:
        raise ValueError(expected)
    return coverage


def check_share_bounds(min_share, max_share, num_options: int) -> None:
    """L2DError naming the flag when no assignment of inputs can meet the workload bounds."""
    for name, values in (("min_share", min_share), ("max_share", max_share)):
        if values is None:
            continue
        if len(values) != num_options:
            raise invalid(name, values, f"gives {len(values)} numbers, needs {num_options}: "
                          "one per expert of --train-files, then the classifier")
        if not all(0 <= v <= 1 for v in values):
            raise invalid(name, values, "every share must be in [0, 1]")
    if min_share is not None and max_share is not None:
        for index, (low, high) in enumerate(zip(min_share, max_share)):
            if low > high:
                raise invalid("min_share", min_share, f"option {index}'s minimum {low:g} is "
                              f"above its --max-share {high:g}")
    if min_share is not None and sum(min_share) > 1 + 1e-6:
        raise invalid("min_share", min_share, f"the minimums add up to {sum(min_share):g} > 1")
    if max_share is not None and sum(max_share) < 1 - 1e-6:
        raise invalid("max_share", max_share, f"the maximums add up to {sum(max_share):g} < 1")


def check_expert_names(names, num_experts: int) -> None:
    """L2DError naming ``--expert-names`` unless it gives one distinct, non-empty name per expert,
    none of them ``classifier`` (the name of the option the classifier keeps)."""
    given = ",".join(names)
    if len(names) != num_experts:
        raise L2DError(f"--expert-names={given}: gives {len(names)} names for {num_experts} "
                       "experts of --train-files")
    if not all(name.strip() for name in names) or len(set(names)) != len(names):
        raise L2DError(f"--expert-names={given}: every expert needs its own non-empty name")
    if CLASSIFIER in names:
        raise L2DError(f"--expert-names={given}: '{CLASSIFIER}' names the classifier's option")


@dataclasses.dataclass(frozen=True)
class DataOptions(Options):
    """The manifests, the experts' names and what is done to the images."""

    title = "data"

    train_files: tuple[str, ...] = option(
        (), "expert manifests of the training split, one per expert; or a folder (its "
        "train_*.json) or a glob, sorted, the ground truth left out", metavar="A.json,B.json")
    train_groundtruth_file: str = option(
        "", "ground-truth manifest of the training split", metavar="GT.json")
    test_files: tuple[str, ...] = option(
        (), "expert manifests of the test split, the same experts in the same order; or a "
        "folder (its test_*.json) or a glob, matched to --train-files by name (test_X.json is "
        "expert train_X.json)", changes=ON_TEST, metavar="A.json,B.json")
    test_groundtruth_file: str = option(
        "", "ground-truth manifest of the test split", changes=ON_TEST, metavar="GT.json")
    val_fraction: float = option(
        0.0, "share of the training manifests held out as the validation split, stratified by "
        "class and drawn from --seed (0: none, unless --val-groundtruth-file is given)")
    val_groundtruth_file: str = option(
        "", "ground-truth manifest of a validation split of its own, instead of --val-fraction",
        metavar="GT.json")
    val_files: tuple[str, ...] = option(
        (), "expert manifests of that validation split, the experts of --train-files in their "
        "order; or a folder (its val_*.json) or a glob, matched by name", metavar="A.json,B.json")
    expert_names: tuple[str, ...] | None = option(
        None, "the experts' names, in --train-files order, in the summary, plots, decisions "
        "and the served model's columns (default: the training manifests' file names)",
        metavar="A,B")
    num_classes: int | None = option(
        None, "number of classes C (default: the largest training label + 1)")
    augment: bool = option(False, "4-pixel pad + random crop + horizontal flip of training "
                           "images")
    norm_mean: tuple[float, ...] | None = option(
        None, "per-channel mean of pixels in [0, 1] (default: computed from the training set)")
    norm_std: tuple[float, ...] | None = option(
        None, "per-channel std, given together with --norm-mean")
    # (H, W, C) of the training images, recorded so that --test can check its data.
    image_shape: tuple[int, int, int] | None = derived()

    def validate(self) -> None:
        for name in ("train_groundtruth_file", "test_groundtruth_file"):
            if not getattr(self, name):
                raise invalid(name, "''", "is required")
        for name in ("train_files", "test_files"):
            if not getattr(self, name):
                raise invalid(name, "''", "needs at least one expert manifest (comma-separated)")
        if len(self.train_files) != len(self.test_files):
            raise invalid("test_files", self.test_files,
                          f"gives {len(self.test_files)} experts but --train-files gives "
                          f"{len(self.train_files)}; list the same experts in the same order")
        self.validate_validation_split()
        if self.expert_names is not None:
            check_expert_names(self.expert_names, len(self.train_files))
        check_at_least(self, ("num_classes",), 2)
        if (self.norm_mean is None) != (self.norm_std is None):
            raise invalid("norm_mean" if self.norm_mean is None else "norm_std", None,
                          "give --norm-mean and --norm-std together")
        if self.norm_std is not None:
            if len(self.norm_mean) != len(self.norm_std):
                raise invalid("norm_std", self.norm_std, f"has {len(self.norm_std)} values but "
                              f"--norm-mean has {len(self.norm_mean)}")
            if any(not (math.isfinite(s) and s > 0) for s in self.norm_std):
                raise invalid("norm_std", self.norm_std, "every value must be > 0")

    def validate_validation_split(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise invalid("val_fraction", self.val_fraction, "must be in [0, 1)")
        if self.val_fraction and self.val_groundtruth_file:
            raise invalid("val_fraction", self.val_fraction, "give it or "
                          "--val-groundtruth-file, not both")
        if bool(self.val_groundtruth_file) != bool(self.val_files):
            raise invalid("val_files" if self.val_groundtruth_file else "val_groundtruth_file",
                          "''", "give --val-groundtruth-file and --val-files together")
        if self.val_files and len(self.val_files) != len(self.train_files):
            raise invalid("val_files", self.val_files,
                          f"gives {len(self.val_files)} experts but --train-files gives "
                          f"{len(self.train_files)}; list the same experts in the same order")

    @property
    def num_experts(self) -> int:
        return len(self.train_files)

    @property
    def has_validation(self) -> bool:
        return bool(self.val_fraction or self.val_groundtruth_file)

    def experts(self) -> list[str]:
        """The experts' names: ``--expert-names``, else their training manifests' file names
        without ``.json``, made unique (and distinct from ``classifier``) by a ``k:`` prefix
        when two would be equal."""
        if self.expert_names is not None:
            return list(self.expert_names)
        stems = [Path(file).stem for file in self.train_files]
        if len(set(stems)) == len(stems) and CLASSIFIER not in stems:
            return stems
        return [f"{k}:{stem}" for k, stem in enumerate(stems)]

    def options(self) -> list[str]:
        """The experts' names, then the classifier's: the options an input can go to."""
        return [*self.experts(), CLASSIFIER]


@dataclasses.dataclass(frozen=True)
class TrainingOptions(Options):
    """The optimiser, its schedule, the batches, the epochs, the seed and the precision."""

    title = "optimisation"

    optimizer: str = option(
        "sgd", "SGD with momentum; Adam; or AdamW (Adam with decoupled weight decay)",
        choices=OPTIMIZERS)
    lr: float = option(0.01, "initial learning rate")
    lr_schedule: str = option("cosine", "the learning rate over the run: a cosine decay to 0 "
                              "over every step, or constant", choices=LR_SCHEDULES)
    momentum: float = option(0.9, "SGD momentum (--optimizer sgd only)")
    weight_decay: float = option(
        5e-4, "weight decay of convolution and dense kernels only: with sgd and adam an L2 "
        "term added to the gradient (coupled, as PyTorch's weight_decay); with adamw decoupled, "
        "the kernels shrink by lr x this factor each step")
    batch_size: int = option(128, "training and evaluation batch size", changes=ON_TEST)
    num_epochs: int = option(100, "training epochs")
    seed: int = option(0, "seed of initialisation, data order, augmentation and Monte Carlo "
                       "draws")
    compute_dtype: str = option(
        "float32", "precision of activations and matrix products (bfloat16 is for "
        "accelerators); parameters, optimizer states, losses and the E-step stay float32",
        choices=COMPUTE_DTYPES)

    def validate(self) -> None:
        self.check_choices()
        if self.seed < 0:
            raise invalid("seed", self.seed, "must be a non-negative integer")
        check_at_least(self, ("batch_size", "num_epochs"), 1)
        check_positive_number(self, "lr")
        if not 0 <= self.momentum < 1:
            raise invalid("momentum", self.momentum, "must be in [0, 1)")
        check_positive_number(self, "weight_decay", zero=True)


@dataclasses.dataclass(frozen=True)
class EvaluationOptions(Options):
    """Workload bounds and how the test split (and a served batch) is routed."""

    title = "workload bounds and routing"

    max_share: tuple[float, ...] | None = option(
        None, "K + 1 numbers, the experts in --train-files order then the classifier: the "
        "largest share of each option, in each batch of EM's E-step and, with --test-workload "
        "enforce, in the test split (any method)")
    min_share: tuple[float, ...] | None = option(
        None, "K + 1 numbers as --max-share: the smallest shares")
    test_workload: str = option(
        "argmax", "test-time routing: the highest score per input, or the whole split assigned "
        "at once within the share bounds", choices=TEST_WORKLOADS, changes=ON_TEST)

    def validate(self) -> None:
        self.check_choices()
        if self.test_workload == "enforce" and not self.bounded:
            raise invalid("test_workload", self.test_workload, "needs --max-share or --min-share")

    @property
    def bounded(self) -> bool:
        return self.min_share is not None or self.max_share is not None


@dataclasses.dataclass(frozen=True)
class SelectionOptions(Options):
    """What the validation split chooses: the checkpoint of the run, and the operating point."""

    title = "model selection and operating point"

    select_by: str = option(
        LAST_EPOCH, "the checkpoint the run ends with, --test evaluates and the model serves: "
        "the last epoch's, or the epoch's with the best value of this validation metric (the "
        "highest; the lowest for an ECE)", choices=SELECTABLE)
    operating_point: str = option(
        DEFAULT_POINT, "the offset added to the classifier's score against the experts': 0 "
        f"('{DEFAULT_POINT}'), the offset of the highest validation accuracy ('{BEST_VAL}'), "
        "or that of the validation coverage nearest to X ('coverage=X')",
        metavar=f"{DEFAULT_POINT}|{BEST_VAL}|coverage=X")

    def validate(self) -> None:
        self.check_choices()
        try:
            parse_operating_point(self.operating_point)
        except ValueError as error:
            raise invalid("operating_point", self.operating_point, str(error)) from None

    @property
    def uses_validation(self) -> bool:
        return self.select_by != LAST_EPOCH or self.operating_point != DEFAULT_POINT


@dataclasses.dataclass(frozen=True)
class RuntimeOptions(Options):
    """Devices, hosts, the loader and the progress bars: speed, never the numbers."""

    title = "devices, hosts and loading"

    jax_platform: str | None = option(
        None, "JAX platform: cpu, cuda, ... (default: JAX's choice)", changes=ANY_TIME)
    mem_frac: float | None = option(None, "share of GPU memory JAX preallocates",
                                    changes=ANY_TIME)
    compilation_cache: bool = option(
        True, "JAX's persistent compilation cache (a second launch skips compiling)",
        changes=ANY_TIME)
    compilation_cache_dir: str | None = option(
        None, "folder of the compilation cache (default: $XDG_CACHE_HOME or ~/.cache, then "
        "l2d/jax)", changes=ANY_TIME)
    coordinator_address: str | None = option(
        None, "multi-host: HOST:PORT of process 0, for jax.distributed.initialize",
        changes=ANY_TIME)
    num_processes: int = option(1, "multi-host: number of processes", changes=ANY_TIME)
    process_id: int = option(0, "multi-host: this process's index, 0 to --num-processes - 1",
                             changes=ANY_TIME)
    cache_images: bool = option(
        True, "decode images from disk every epoch instead of keeping them in memory (for "
        "datasets larger than RAM)", negated_flag="--stream-from-disk", changes=ANY_TIME)
    prefetch_size: int = option(4, "batches prepared ahead of the training step",
                                changes=ANY_TIME)
    num_threads: int = option(4, "image decoding threads", changes=ANY_TIME)
    tqdm: bool = option(True, "progress bars (silent anyway when output is not a terminal)",
                        changes=ANY_TIME)

    def validate(self) -> None:
        check_at_least(self, ("num_processes", "prefetch_size", "num_threads"), 1)
        if not 0 <= self.process_id < self.num_processes:
            raise invalid("process_id", self.process_id,
                          f"must be in [0, --num-processes={self.num_processes})")
        if (self.num_processes > 1) != (self.coordinator_address is not None):
            raise invalid("coordinator_address", self.coordinator_address,
                          "give it exactly when --num-processes is above 1")
        if self.mem_frac is not None and not 0 < self.mem_frac <= 1:
            raise invalid("mem_frac", self.mem_frac, "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class TrackingOptions(Options):
    """The MLflow experiment and run, and where the run's folder and checkpoints go."""

    title = "tracking and checkpoints"

    experiment_name: str = option("l2d", "MLflow experiment")
    run_name: str | None = option(None, "MLflow run name (default: one MLflow makes up)")
    run_description: str = option("", "free text shown with the run in MLflow")
    tracking_uri: str | None = option(
        None, "MLflow tracking URI, e.g. http://127.0.0.1:8080 (default: sqlite file "
        "mlflow.db in the current folder)", changes=ANY_TIME)
    artifact_path: str = option(
        "artifacts", "folder of <run_id>/config.json and <run_id>/checkpoints",
        changes=ANY_TIME)
    checkpoint_every: int = option(5, "save a checkpoint every N epochs and after the last")
    keep_checkpoints: int = option(3, "newest checkpoints kept per run")

    def validate(self) -> None:
        if not self.experiment_name.strip():
            raise invalid("experiment_name", "''", "must not be empty")
        if self.run_name is not None and not self.run_name.strip():
            raise invalid("run_name", "''", "must not be empty")
        check_at_least(self, ("checkpoint_every", "keep_checkpoints"), 1)


# The shared groups, in the order of ``--help`` and of the docs; the method's options follow.
SHARED_GROUPS = (DataOptions, TrainingOptions, EvaluationOptions, SelectionOptions,
                 RuntimeOptions, TrackingOptions)
# The field of TrainConfig that names the method; its flag is --method.
METHOD = "method"


def shared_options() -> list[Option]:
    return [declared for group in SHARED_GROUPS for declared in group.declared()]


def method_options(name: str) -> list[Option]:
    return METHODS[name].options.declared()


def changeable(*, testing: bool) -> frozenset[str]:
    """The options that ``--test`` (``testing``) or ``--resume`` may change from the run's."""
    allowed = {ON_TEST, ANY_TIME} if testing else {ANY_TIME}
    options = [*shared_options(), *(declared for name in METHODS
                                    for declared in method_options(name))]
    return frozenset(item.name for item in options if item.declaration.changes in allowed)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run: one of each shared group, the method's name and its
    options (the ``options`` class of ``l2d.methods.METHODS[method]``)."""

    data: DataOptions = DataOptions()
    training: TrainingOptions = TrainingOptions()
    evaluation: EvaluationOptions = EvaluationOptions()
    selection: SelectionOptions = SelectionOptions()
    runtime: RuntimeOptions = RuntimeOptions()
    tracking: TrackingOptions = TrackingOptions()
    method: str = "em"
    # None: the method's defaults.
    method_options: Options | None = None

    def __post_init__(self):
        if self.method in METHODS and self.method_options is None:
            object.__setattr__(self, "method_options", METHODS[self.method].options())

    def validate(self) -> "TrainConfig":
        """Raise L2DError naming the first flag whose value cannot work; return self."""
        registered(self.method)
        for group in (self.tracking, self.training, self.data, self.runtime, self.evaluation,
                      self.selection):
            group.check_types()
            group.validate()
        if self.selection.uses_validation and not self.data.has_validation:
            name = ("select_by" if self.selection.select_by != LAST_EPOCH
                    else "operating_point")
            raise invalid(name, getattr(self.selection, name), "needs a validation split: "
                          "--val-fraction, or --val-groundtruth-file with --val-files")
        if (self.selection.operating_point != DEFAULT_POINT
                and self.evaluation.test_workload == "enforce"):
            raise invalid("operating_point", self.selection.operating_point, "does not combine "
                          "with --test-workload enforce, whose bounds set the shares")
        check_share_bounds(self.evaluation.min_share, self.evaluation.max_share,
                           self.data.num_experts + 1)
        expected = METHODS[self.method].options
        if not isinstance(self.method_options, expected):
            raise L2DError(f"--method {self.method} takes {expected.__name__}, not "
                           f"{type(self.method_options).__name__}")
        self.method_options.check_types()
        self.method_options.validate()
        return self

    def groups(self) -> list[Options]:
        return [self.data, self.training, self.evaluation, self.selection, self.runtime,
                self.tracking, self.method_options]

    def to_dict(self) -> dict[str, Any]:
        """The flat ``{name: value}`` of every group, with the method's name and options."""
        values = {METHOD: self.method}
        for group in self.groups():
            values.update(group.values())
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> "TrainConfig":
        """The config of a flat ``{name: value}`` (``to_dict``, or the flags typed).

        A name that no group of it declares is an L2DError (one line, naming the methods that
        read it), unless ``strict`` is off: a ``config.json`` of an older l2d records the
        options of other methods too.
        """
        method = values.get(METHOD, cls.method)
        if strict:
            own = {*(name for group in SHARED_GROUPS for name in group.field_names()),
                   *registered(method).options.field_names(), METHOD}
            for name in values:
                if name not in own:
                    owners = flag_owners(name)
                    raise L2DError(f"{flag_of(name)}: only used by --method "
                                   f"{listed(owners, 'or')}, not by --method {method}" if owners
                                   else f"{name!r}: no such option of l2d train")
        return cls(data=DataOptions.from_values(values),
                   training=TrainingOptions.from_values(values),
                   evaluation=EvaluationOptions.from_values(values),
                   selection=SelectionOptions.from_values(values),
                   runtime=RuntimeOptions.from_values(values),
                   tracking=TrackingOptions.from_values(values),
                   method=method,
                   method_options=(registered(method).options.from_values(values)))

    def replace(self, **values: Any) -> "TrainConfig":
        """This config with some options (by flat name) changed; L2DError for a name it has
        no option of."""
        return TrainConfig.from_dict({**self.to_dict(), **values})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            return cls.from_dict(values, strict=False)
        except (OSError, ValueError, TypeError) as error:
            raise L2DError(f"{path}: cannot read the run's configuration: {error}") from None


def flag_owners(name: str) -> list[str]:
    """The methods whose options include ``name``."""
    return [method for method in METHODS
            if name in {item.name for item in method_options(method)}]


def check_method_flags(given: dict[str, Any], config: TrainConfig) -> None:
    """A flag that only another method reads is an error, not silently ignored; so is a flag
    that the method reads only with another of its options (the method's ``check_given``)."""
    own = {item.name for item in method_options(config.method)}
    shared = {item.name for item in shared_options()}
    for name in given:
        if name not in own and name not in shared and name != METHOD:
            owners = flag_owners(name)
            raise L2DError(f"{flag_of(name)}: only used by --method {listed(owners, 'or')}, "
                           f"not by --method {config.method}")
    bounds = [name for name in ("max_share", "min_share") if name in given]
    if (bounds and not METHODS[config.method].trains_with_share_bounds
            and config.evaluation.test_workload != "enforce"):
        # EM's E-step reads the bounds in training; the other methods only route by them.
        raise L2DError(f"{flag_of(bounds[0])}: --method {config.method} uses the bounds only "
                       "with --test-workload enforce")
    if "momentum" in given and config.training.optimizer != "sgd":
        raise L2DError(f"--momentum: only used by --optimizer sgd, not by --optimizer "
                       f"{config.training.optimizer}")
    config.method_options.check_given(set(given) & own)

