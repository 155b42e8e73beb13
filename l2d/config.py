"""The configuration of a training run: one frozen dataclass, checked once by ``validate()``."""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from l2d.errors import L2DError

MODEL_NAMES = ("cnn", "preact_resnet10")
COMPUTE_DTYPES = ("float32", "bfloat16")
E_STEPS = ("exact", "mc")
CLF_WEIGHTINGS = ("posterior", "uniform")
TEST_WORKLOADS = ("argmax", "enforce")
MISSING_MODES = ("exclude", "model")
# The option of an input the classifier keeps; the other options are the experts, by name.
CLASSIFIER = "classifier"

# The flags (config fields) each --method reads; giving one that belongs only to another method
# is an error rather than silently ignored. Keys are the method names of ``l2d.methods.METHODS``.
METHOD_FIELDS: dict[str, frozenset[str]] = {
    "em": frozenset({"clf_model", "clf_width", "dfr_model", "dfr_width", "e_step", "mc_samples",
                     "expert_smoothing", "clf_weighting", "allow_missing_annotations",
                     "missing", "ann_model", "ann_width"}),
    "softmax": frozenset({"model", "width"}),
    "ova": frozenset({"model", "width"}),
}
METHOD_NAMES = tuple(METHOD_FIELDS)

# Fields that may change when a run is resumed or re-evaluated: they affect speed and where
# things are written, never the numbers a run produces.
RUNTIME_FIELDS = frozenset(
    {
        "tracking_uri",
        "artifact_path",
        "jax_platform",
        "mem_frac",
        "prefetch_size",
        "num_threads",
        "tqdm",
        "cache_images",
        "compilation_cache",
        "compilation_cache_dir",
        "coordinator_address",
        "num_processes",
        "process_id",
    }
)


def check_share_bounds(min_share, max_share, num_options: int) -> None:
    """L2DError naming the flag when no assignment of inputs can meet the workload bounds."""

    def fail(flag: str, values, problem: str) -> None:
        raise L2DError(f"--{flag}={','.join(f'{v:g}' for v in values)}: {problem}")

    for flag, values in (("min-share", min_share), ("max-share", max_share)):
        if values is None:
            continue
        if len(values) != num_options:
            fail(flag, values, f"gives {len(values)} numbers, needs {num_options}: one per "
                 "expert of --train-files, then the classifier")
        if not all(0 <= v <= 1 for v in values):
            fail(flag, values, "every share must be in [0, 1]")
    if min_share is not None and max_share is not None:
        for option, (low, high) in enumerate(zip(min_share, max_share)):
            if low > high:
                fail("min-share", min_share, f"option {option}'s minimum {low:g} is above its "
                     f"--max-share {high:g}")
    if min_share is not None and sum(min_share) > 1 + 1e-6:
        fail("min-share", min_share, f"the minimums add up to {sum(min_share):g} > 1")
    if max_share is not None and sum(max_share) < 1 - 1e-6:
        fail("max-share", max_share, f"the maximums add up to {sum(max_share):g} < 1")


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


def expert_names(config: "TrainConfig") -> list[str]:
    """The experts' names: ``--expert-names``, else their training manifests' file names without
    ``.json``, made unique (and distinct from ``classifier``) by a ``k:`` prefix when two would
    be equal."""
    if config.expert_names is not None:
        return list(config.expert_names)
    stems = [Path(file).stem for file in config.train_files]
    if len(set(stems)) == len(stems) and CLASSIFIER not in stems:
        return stems
    return [f"{k}:{stem}" for k, stem in enumerate(stems)]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run. Flag names are these field names with dashes."""

    # MLflow experiment the run belongs to, the run's name (None: MLflow's generated one) and a
    # free-text description shown in the UI.
    experiment_name: str = "l2d"
    run_name: str | None = None
    run_description: str = ""
    # Manifests: one expert manifest per expert (same order in train and test) and one ground truth.
    train_files: tuple[str, ...] = ()
    train_groundtruth_file: str = ""
    test_files: tuple[str, ...] = ()
    test_groundtruth_file: str = ""
    # The experts' names, in --train-files order, in the summary, plots, decisions and the served
    # model's columns; None names them by their training manifests' file names.
    expert_names: tuple[str, ...] | None = None
    # Number of classes C; None infers it from the training ground truth as max(label) + 1.
    num_classes: int | None = None
    # Learning-to-defer method (l2d/methods): EM, or a surrogate loss on one network.
    method: str = "em"
    # EM's networks by registry name; width None takes the model's default (cnn 32, resnet 64).
    clf_model: str = "cnn"
    clf_width: int | None = None
    dfr_model: str = "preact_resnet10"
    dfr_width: int | None = None
    # The surrogate methods' one network (C + K outputs) and its width.
    model: str = "preact_resnet10"
    width: int | None = None
    # SGD with momentum, a cosine-decayed learning rate, and weight decay as an L2 term added to
    # the gradient (coupled, not AdamW-style decoupled) of convolution and dense kernels only.
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    num_epochs: int = 100
    # E-step: exact posterior, or Monte Carlo EM with `mc_samples` draws of z per input.
    e_step: str = "exact"
    mc_samples: int = 8
    # Label smoothing of the experts' annotations in p(y | z = expert); 0 trusts them fully.
    expert_smoothing: float = 0.0
    # Classifier loss weights: q(classifier) as in the original, or 1 for every sample.
    clf_weighting: str = "posterior"
    # Workload bounds: per option (the experts in --train-files order, then the classifier) the
    # share of each batch EM's E-step may assign to it, and of the test split (or of a batch
    # routed by the trained system) under --test-workload enforce, for every method; None
    # leaves it unbounded.
    max_share: tuple[float, ...] | None = None
    min_share: tuple[float, ...] | None = None
    # Test-time routing: the gate's argmax per input, or the whole split assigned at once so
    # that the shares meet the bounds.
    test_workload: str = "argmax"
    # Expert manifests may lack files or give "label": null; EM then leaves a missing expert out
    # of that input's E-step ("exclude"), or models p(t_k | x) with a third network ("model").
    allow_missing_annotations: bool = False
    missing: str = "exclude"
    ann_model: str = "cnn"
    ann_width: int | None = None
    # 4-pixel pad + random crop + horizontal flip of training images.
    augment: bool = False
    # Per-channel normalisation of pixels in [0, 1]; None computes it from the training set.
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None
    # Keep decoded uint8 images in memory (fast) or decode from disk every epoch (large data).
    cache_images: bool = True
    # One seed for initialisation, data order, augmentation and Monte Carlo draws.
    seed: int = 0
    # Derived, not a flag: (H, W, C) of the training images, recorded so --test can check its data.
    image_shape: tuple[int, int, int] | None = None
    # Save a checkpoint every N epochs (and after the last), keeping the newest `keep_checkpoints`.
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    # Where runs are tracked (None: sqlite file ./mlflow.db) and where checkpoints go.
    tracking_uri: str | None = None
    artifact_path: str = "artifacts"
    # JAX platform ("cpu", "cuda", ...; None lets JAX choose) and the GPU memory share it takes.
    jax_platform: str | None = None
    mem_frac: float | None = None
    # Precision of activations and matrix products (bfloat16 is for accelerators); parameters,
    # optimizer states, losses and the E-step stay float32.
    compute_dtype: str = "float32"
    # JAX's persistent compilation cache, so that a second launch skips compilation; None puts it
    # under $XDG_CACHE_HOME (or ~/.cache)/l2d/jax.
    compilation_cache: bool = True
    compilation_cache_dir: str | None = None
    # Multi-host training: every process gets the same flags but its own --process-id.
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    # Loader: batches prepared ahead of the training step, and decoding threads.
    prefetch_size: int = 4
    num_threads: int = 4
    # Progress bars (they stay quiet anyway when output is not a terminal).
    tqdm: bool = True

    def validate(self) -> "TrainConfig":
        """Raise L2DError naming the first flag whose value cannot work; return self."""

        def fail(flag: str, value: Any, problem: str) -> None:
            raise L2DError(f"--{flag.replace('_', '-')}={value}: {problem}")

        if not self.experiment_name.strip():
            fail("experiment_name", "''", "must not be empty")
        if self.seed < 0:
            fail("seed", self.seed, "must be a non-negative integer")
        for name in ("train_groundtruth_file", "test_groundtruth_file"):
            if not getattr(self, name):
                fail(name, "''", "is required")
        for name in ("train_files", "test_files"):
            if not getattr(self, name):
                fail(name, "''", "needs at least one expert manifest (comma-separated)")
        if len(self.train_files) != len(self.test_files):
            fail(
                "test_files",
                ",".join(self.test_files),
                f"gives {len(self.test_files)} experts but --train-files gives "
                f"{len(self.train_files)}; list the same experts in the same order",
            )
        if self.run_name is not None and not self.run_name.strip():
            fail("run_name", "''", "must not be empty")
        if self.expert_names is not None:
            check_expert_names(self.expert_names, len(self.train_files))
        if self.method not in METHOD_NAMES:
            fail("method", self.method, f"unknown method; choose one of {METHOD_NAMES}")
        for name in ("clf_model", "dfr_model", "model", "ann_model"):
            if getattr(self, name) not in MODEL_NAMES:
                fail(name, getattr(self, name), f"unknown model; choose one of {MODEL_NAMES}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            fail("compute_dtype", self.compute_dtype, f"choose one of {COMPUTE_DTYPES}")
        if self.num_processes < 1:
            fail("num_processes", self.num_processes, "must be at least 1")
        if not 0 <= self.process_id < self.num_processes:
            fail("process_id", self.process_id,
                 f"must be in [0, --num-processes={self.num_processes})")
        if (self.num_processes > 1) != (self.coordinator_address is not None):
            fail("coordinator_address", self.coordinator_address,
                 "give it exactly when --num-processes is above 1")
        if self.e_step not in E_STEPS:
            fail("e_step", self.e_step, f"choose one of {E_STEPS}")
        if self.clf_weighting not in CLF_WEIGHTINGS:
            fail("clf_weighting", self.clf_weighting, f"choose one of {CLF_WEIGHTINGS}")
        if self.test_workload not in TEST_WORKLOADS:
            fail("test_workload", self.test_workload, f"choose one of {TEST_WORKLOADS}")
        check_share_bounds(self.min_share, self.max_share, len(self.train_files) + 1)
        if self.test_workload == "enforce" and self.min_share is None and self.max_share is None:
            fail("test_workload", self.test_workload, "needs --max-share or --min-share")
        if self.missing not in MISSING_MODES:
            fail("missing", self.missing, f"choose one of {MISSING_MODES}")
        if self.missing == "model" and not self.allow_missing_annotations:
            fail("missing", self.missing, "only with --allow-missing-annotations")
        positive_ints = ("batch_size", "num_epochs", "mc_samples", "checkpoint_every",
                         "keep_checkpoints", "prefetch_size", "num_threads")
        for name in positive_ints:
            if getattr(self, name) < 1:
                fail(name, getattr(self, name), "must be at least 1")
        for name in ("num_classes", "clf_width", "dfr_width", "width", "ann_width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(name, value, "must be at least 1")
        if self.num_classes is not None and self.num_classes < 2:
            fail("num_classes", self.num_classes, "must be at least 2")
        if not (math.isfinite(self.lr) and self.lr > 0):
            fail("lr", self.lr, "must be a positive number")
        if not 0 <= self.momentum < 1:
            fail("momentum", self.momentum, "must be in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            fail("weight_decay", self.weight_decay, "must be a non-negative number")
        if not 0 <= self.expert_smoothing <= 1:
            fail("expert_smoothing", self.expert_smoothing, "must be in [0, 1]")
        if self.mem_frac is not None and not 0 < self.mem_frac <= 1:
            fail("mem_frac", self.mem_frac, "must be in (0, 1]")
        if (self.norm_mean is None) != (self.norm_std is None):
            fail("norm_mean" if self.norm_mean is None else "norm_std", None,
                 "give --norm-mean and --norm-std together")
        if self.norm_std is not None:
            if len(self.norm_mean) != len(self.norm_std):
                fail("norm_std", ",".join(map(str, self.norm_std)),
                     f"has {len(self.norm_std)} values but --norm-mean has {len(self.norm_mean)}")
            if any(not (math.isfinite(s) and s > 0) for s in self.norm_std):
                fail("norm_std", ",".join(map(str, self.norm_std)), "every value must be > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def unused_fields(self) -> frozenset[str]:
        """Fields that only methods other than ``self.method`` read (left out of MLflow params)."""
        others = frozenset().union(*(fields for name, fields in METHOD_FIELDS.items()
                                     if name != self.method))
        return others - METHOD_FIELDS[self.method]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict`` (JSON turns tuples into lists; this turns them back)."""
        known = {f.name for f in dataclasses.fields(cls)}
        tuples = {"train_files", "test_files", "expert_names", "norm_mean", "norm_std",
                  "image_shape", "max_share", "min_share"}
        return cls(**{
            k: tuple(v) if k in tuples and v is not None else v
            for k, v in values.items() if k in known
        })

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise L2DError(f"{path}: cannot read the run's configuration: {error}") from None
