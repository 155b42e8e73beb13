"""``l2d export``: log the MLflow model ``deferral_system`` of an existing run from its
checkpoint in use (the selected one, else the latest; a run trained before l2d logged it, or
one to register), leaving the run's status and end time as they were."""

import sys

import numpy as np

from l2d.checkpoint import NoCheckpoint
from l2d.config import TrainConfig
from l2d.data.manifest import read_manifest
from l2d.errors import L2DError
from l2d.parallel import data_parallel
from l2d.run_folder import RunFolder
from l2d.serving.pyfunc import log_deferral_system
from l2d.serving.trained_system import EXAMPLE_IMAGES, read_image_files
from l2d.tracking import MlflowTracker
from l2d.train_state import method_of


def export(config: TrainConfig, folder: RunFolder, tracker: MlflowTracker, *,
           register_model: str | None = None) -> str:
    """Log ``deferral_system`` to the run of ``folder`` from its checkpoint in use, at its
    operating point; return the model URI."""
    parallel = data_parallel()
    try:
        _, restored = folder.restore_in_use(config, method_of(config), parallel)
    except NoCheckpoint:
        raise L2DError(f"--run-id={folder.run_id}: the run is "
                       f"{tracker.run_status(folder.run_id)} and saved no checkpoint: there is "
                       "nothing to export") from None
    with tracker.reopened(folder.run_id):
        return log_deferral_system(config, parallel.fetch(restored.state[0]),
                                   example_images(config),
                                   offset=float(restored.extra.get("offset", 0.0)),
                                   registered_model_name=register_model)


def example_images(config: TrainConfig) -> np.ndarray:
    """The run's first test images, or black images of its shape when its test manifest is no
    longer readable (the example only shows what the model takes)."""
    manifest = config.data.test_groundtruth_file
    try:
        files = [file for file, _ in read_manifest(manifest)]
        return read_image_files(files[:EXAMPLE_IMAGES], manifest)
    except L2DError as error:
        print(f"l2d: the input example is black images: {error}", file=sys.stderr)
        return np.zeros((EXAMPLE_IMAGES, *config.data.image_shape), np.uint8)
