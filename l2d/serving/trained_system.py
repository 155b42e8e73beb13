"""A trained deferral system outside training: one folder with its weights, configuration and
option names, and the routing of new uint8 images with it.

The folder (what the MLflow model ``deferral_system`` carries) holds ``config.json`` (the run's
configuration: method, networks, classes, normalisation, bounds), ``weights.npz`` (the model's
parameters and batch statistics, keyed by their path in the model; no optimizer state) and
``system.json`` (the experts' names, the class names, the image shape and the operating point's
offset of the classifier's score, chosen on validation). Nothing in it needs a checkpoint, a
manifest of the experts' labels or MLflow.

Images are scored in chunks whose sizes are padded to powers of two, so that a server answering
requests of any size compiles a handful of programs, not one per size. Routing is that of
``l2d train --test`` (``l2d.evaluation.evaluate.route``) with every expert available: each image
goes to its highest-scored option, the offset added to the classifier's score (the scores it
reports include it), or, with ``workload="enforce"``, the whole batch is assigned within the run's
share bounds.
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l2d.config import CLASSIFIER, TEST_WORKLOADS, DataOptions, TrainConfig
from l2d.data.images import decode_all
from l2d.data.manifest import SplitRecords
from l2d.data.prepare import CLASSES_FILE
from l2d.errors import L2DError
from l2d.evaluation.evaluate import decide_on_images, route
from l2d.evaluation.operating_point import with_offset
from l2d.preprocess import channel_statistics
from l2d.run_folder import CONFIG_FILE
from l2d.train_state import method_of
from l2d.workload import share_bounds

WEIGHTS_FILE = "weights.npz"
SYSTEM_FILE = "system.json"
# ``expert_index`` of an image the classifier keeps.
KEPT = -1
# Images of a model's input example: the first test images of the run.
EXAMPLE_IMAGES = 2
# Largest number of images scored by one call of the compiled program.
MAX_CHUNK = 256


def class_names(data: DataOptions) -> list[str]:
    """The names of ``classes.json`` beside the training ground truth when it has one per class
    (``l2d prepare`` writes it), else the class indices as text."""
    path = Path(data.train_groundtruth_file).parent / CLASSES_FILE
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        names = None
    if (isinstance(names, list) and len(names) == data.num_classes
            and all(isinstance(name, str) for name in names)):
        return names
    return [str(c) for c in range(data.num_classes)]


def flat_arrays(state) -> dict[str, np.ndarray]:
    """``{path in the model: array}`` of an ``nnx.State``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def save_system(folder: Path, config: TrainConfig, model_state, *, offset: float = 0.0
                ) -> Path:
    """Write the folder of a trained system; ``model_state`` is ``nnx.state(model)`` (host or
    device arrays), ``offset`` the operating point's."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_FILE)
    np.savez(folder / WEIGHTS_FILE,
             **{key: np.asarray(value) for key, value in flat_arrays(model_state).items()})
    (folder / SYSTEM_FILE).write_text(json.dumps({
        "experts": config.data.experts(),
        "classes": class_names(config.data),
        "image_shape": list(config.data.image_shape),
        "method": config.method,
        "classifier_offset": offset,
    }, indent=2) + "\n")
    return folder


@dataclasses.dataclass(frozen=True, eq=False)
class Routing:
    """Per image: the chosen option (0..K-1 an expert, K the classifier), the classifier's class
    and every option's score (experts first, classifier last)."""

    chosen: np.ndarray  # int [N]
    class_prediction: np.ndarray  # int32 [N]
    scores: np.ndarray  # [N, K + 1], the classifier's with the operating point's offset


class TrainedSystem:
    """A trained system loaded from its folder, ready to route uint8 images of its shape."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.config = TrainConfig.load(folder / CONFIG_FILE)
        system = json.loads((folder / SYSTEM_FILE).read_text())
        self.experts: list[str] = system["experts"]
        self.classes: list[str] = system["classes"]
        self.image_shape = tuple(system["image_shape"])
        # Systems saved before the operating point existed route at offset 0.
        self.classifier_offset = float(system.get("classifier_offset", 0.0))
        self.options = [*self.experts, CLASSIFIER]
        method = method_of(self.config)
        # Shapes and dtypes only: nothing is computed before the weights are loaded.
        graphdef, abstract_state = nnx.split(
            nnx.eval_shape(lambda: method.create_model(nnx.Rngs(params=0))))
        state = load_weights(folder / WEIGHTS_FILE, abstract_state)
        mean, std = channel_statistics(self.config.data.norm_mean, self.config.data.norm_std)

        def decide(state, images):
            model = nnx.merge(graphdef, state)
            model.eval()
            return decide_on_images(model, method, images, mean, std)

        self._state = state
        self._decide = jax.jit(decide)

    def check_images(self, images, source: str = "input") -> np.ndarray:
        """uint8 ``[N, H, W, C]`` images of this system's shape, else L2DError saying what was
        given and what the system takes.

        Integer arrays are taken when every value is in 0..255 (JSON has no dtype: a body of
        pixels arrives as int64); nothing is ever cast silently, so floats (pixels scaled to
        [0, 1], NaN, infinities) and integers out of range are refused. An empty batch (no
        images, or an empty 1-D array as ``[]`` in JSON) is an empty uint8 batch.
        """
        images = np.asarray(images)
        if images.size == 0 and images.ndim in (1, 4):
            return np.zeros((0, *self.image_shape), np.uint8)
        expected = "x".join(map(str, self.image_shape)) + " (HxWxC)"
        if images.ndim == 4 and images.dtype.kind in "iuf" and images.dtype != np.uint8:
            outside = ~np.isin(images, np.arange(256)) if images.dtype.kind == "f" else (
                (images < 0) | (images > 255))
            if outside.any():
                kind = "float" if images.dtype.kind == "f" else "integer"
                raise L2DError(f"{source}: pixels are uint8 in 0..255; got {kind} values such "
                               f"as {images[outside].flat[0]:g}")
            if images.dtype.kind != "f":
                images = images.astype(np.uint8)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise L2DError(f"{source}: an array of {images.dtype} and shape {images.shape}; "
                           f"expected uint8 images [N, H, W, C] of {expected}")
        if images.shape[1:] != self.image_shape:
            raise L2DError(f"{source}: images of {'x'.join(map(str, images.shape[1:]))}; this "
                           f"system was trained on {expected}")
        return images

    def score(self, images: np.ndarray, *, on_chunk=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores ``[N, K + 1]``, class prediction ``[N]``) of checked uint8 images, in chunks
        of at most ``MAX_CHUNK`` padded to a power of two; ``on_chunk(n)`` after each."""
        scores, classes = [], []
        for start in range(0, len(images), MAX_CHUNK):
            chunk = images[start:start + MAX_CHUNK]
            padded = np.zeros((padded_size(len(chunk)), *self.image_shape), np.uint8)
            padded[:len(chunk)] = chunk
            out = jax.device_get(self._decide(self._state, padded))
            scores.append(out["scores"][:len(chunk)])
            classes.append(out["class_prediction"][:len(chunk)])
            if on_chunk is not None:
                on_chunk(len(chunk))
        if not scores:
            return np.zeros((0, len(self.options)), np.float32), np.zeros(0, np.int32)
        return np.concatenate(scores), np.concatenate(classes)

    def route(self, scores: np.ndarray, class_prediction: np.ndarray, *,
              workload: str | None = None) -> Routing:
        """Choose an option per image: the argmax, or with ``workload="enforce"`` the whole
        batch within the run's share bounds (the default: the run's ``--test-workload``)."""
        evaluation = self.config.evaluation
        workload = workload or evaluation.test_workload
        if workload not in TEST_WORKLOADS:
            raise L2DError(f"workload={workload!r}: choose one of {TEST_WORKLOADS}")
        bounds = None
        if workload == "enforce":
            if not evaluation.bounded:
                raise L2DError("workload='enforce': this run was trained without --max-share "
                               "or --min-share, so there are no bounds to enforce")
            bounds = share_bounds(evaluation.min_share, evaluation.max_share, len(self.options))
        scores = with_offset(scores, self.classifier_offset)
        available = np.ones(scores.shape, bool)
        chosen = route(scores, available, bounds) if len(scores) else np.zeros(0, int)
        return Routing(chosen=chosen, class_prediction=class_prediction, scores=scores)

    def rows(self, routing: Routing) -> dict[str, list]:
        """Columns of the decision table: ``decision``, ``expert_index``, ``label`` (the
        classifier's class when it keeps the image, else empty) and ``score/<option>``."""
        kept = routing.chosen == len(self.experts)
        return {
            "decision": [self.options[c] for c in routing.chosen.tolist()],
            "expert_index": np.where(kept, KEPT, routing.chosen).astype(np.int64).tolist(),
            "label": [self.classes[y] if keep else ""
                      for y, keep in zip(routing.class_prediction.tolist(), kept.tolist())],
            **{f"score/{name}": routing.scores[:, k].astype(np.float64).tolist()
               for k, name in enumerate(self.options)},
        }


def padded_size(n: int) -> int:
    """The smallest power of two >= n: the batch sizes the compiled program is built for."""
    return 1 << max(0, (n - 1).bit_length())


def load_weights(path: Path, abstract_state):
    """The state ``abstract_state`` describes, with the arrays of ``weights.npz``; L2DError when
    an array is missing or of another shape (weights of other networks)."""
    with np.load(path) as stored:
        arrays = dict(stored)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    values = []
    for key_path, leaf in leaves:
        key = jax.tree_util.keystr(key_path)
        value = arrays.get(key)
        if value is None or value.shape != leaf.shape:
            problem = "missing" if value is None else f"of shape {value.shape}, not {leaf.shape}"
            raise L2DError(f"{path}: weights do not fit the model of {CONFIG_FILE}: {key} is "
                           f"{problem}")
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def read_image_files(files, source: str, *, num_threads: int = 4) -> np.ndarray:
    """Decode image files (through MLX-Data, as training does) into a uint8 ``[N, H, W, C]``
    array; L2DError naming ``source``, the entry and the file that is missing, unreadable or of
    another shape than the first, or saying that the pixels would not fit in memory."""
    files = tuple(str(Path(file).expanduser().resolve()) for file in files)
    for i, file in enumerate(files):
        if not Path(file).is_file():
            raise L2DError(f"{source}: entry {i} ({file!r}): image file not found")
    split = SplitRecords(groundtruth_path=source, expert_paths=(), files=files,
                         labels=np.zeros(len(files), np.int32),
                         expert_labels=np.zeros((len(files), 0), np.int32))
    pixels = decode_all(split, num_threads=num_threads, keep=True).pixels
    if pixels is None:
        raise L2DError(f"{source}: the {len(files)} images do not fit in memory at once; route "
                       "them in several parts")
    return pixels
