"""``l2d export``: log the MLflow model ``deferral_system`` of an existing run from its latest
checkpoint (a run trained before l2d logged it, or one to register), leaving the run's status
and end time as they were."""

import sys

import numpy as np

from l2d import checkpoint
from l2d.config import TrainConfig
from l2d.data.manifest import read_manifest
from l2d.errors import L2DError
from l2d.methods import make_method
from l2d.parallel import data_parallel
from l2d.system import build_state
from l2d.tracking import MlflowTracker
from l2d.train import run_folder
from l2d.trained_system import EXAMPLE_IMAGES, read_image_files


def export(config: TrainConfig, run_id: str, tracker: MlflowTracker, *,
           register_model: str | None = None) -> str:
    """Log ``deferral_system`` to ``run_id`` from its latest checkpoint; return the model URI."""
    method = make_method(config, in_channels=config.image_shape[-1],
                         num_classes=config.num_classes, num_experts=len(config.train_files))
    parallel = data_parallel()
    _, template = build_state(method, config, total_steps=1, abstract=True)
    try:
        restored = checkpoint.restore_latest(
            run_folder(config, run_id) / "checkpoints", parallel.abstract(template),
            seed=config.seed, method=config.method)
    except checkpoint.NoCheckpoint:
        raise L2DError(f"--run-id={run_id}: the run is {tracker.run_status(run_id)} and saved no "
                       "checkpoint: there is nothing to export") from None
    return tracker.log_deferral_system_to(
        run_id, config, parallel.fetch(restored.state[0]), example_images(config),
        registered_model_name=register_model)


def example_images(config: TrainConfig) -> np.ndarray:
    """The run's first test images, or black images of its shape when its test manifest is no
    longer readable (the example only shows what the model takes)."""
    try:
        files = [file for file, _ in read_manifest(config.test_groundtruth_file)]
        return read_image_files(files[:EXAMPLE_IMAGES], config.test_groundtruth_file)
    except L2DError as error:
        print(f"l2d: the input example is black images: {error}", file=sys.stderr)
        return np.zeros((EXAMPLE_IMAGES, *config.image_shape), np.uint8)
