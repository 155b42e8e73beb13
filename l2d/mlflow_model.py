"""The trained system as an MLflow model (``mlflow.pyfunc``) named ``deferral_system``.

The model carries the folder of ``l2d.trained_system`` as its one artifact and l2d's own code
(``code_paths``), so that it loads wherever l2d's dependencies are installed, with the code that
trained it. ``predict`` takes a batch of images, either uint8 pixels ``[N, H, W, C]`` or image
file paths as a 1-D numpy array of dtype object (MLflow's schema check refuses lists and string
dtypes, and over HTTP only pixels pass it), and returns one row per image: ``decision``
("classifier" or the expert's name), ``expert_index`` (-1 when the classifier keeps it),
``label`` (the classifier's class when it keeps the image, else empty) and ``score/<option>`` for
every option.

The input signature declares uint8 tensors ``[N, H, W, C]`` of any height, width and channels
(and MLflow lets 1-D object arrays through it), so that images of another shape are reported by
l2d, naming their shape and the system's, rather than by MLflow's schema check, which quotes the
whole input; MLflow's check refuses other dtypes and ranks.
The parameter ``workload`` ("argmax" or "enforce") overrides the run's ``--test-workload``.
"""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

import l2d
from l2d.config import TrainConfig
from l2d.errors import L2DError, first_line
from l2d.trained_system import (
    CLASSIFIER,
    TrainedSystem,
    class_names,
    expert_names,
    read_image_files,
    save_system,
)

MODEL_NAME = "deferral_system"
SYSTEM_ARTIFACT = "system"


class DeferralSystemModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of ``TrainedSystem`` (see the module docstring)."""

    def load_context(self, context) -> None:
        """Load the trained system from the model's one artifact, its folder."""
        self.system = TrainedSystem(Path(context.artifacts[SYSTEM_ARTIFACT]))

    # The ndarray hint is what MLflow's tensor signature hands over; MLflow infers nothing from it.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        """The decision table of a batch (see the module docstring); ``params["workload"]``
        overrides the run's routing."""
        try:
            images = self.images(model_input)
            workload = (params or {}).get("workload") or None
            routing = self.system.route(*self.system.score(images), workload=workload)
        except L2DError as error:
            # MLflow's server answers an MlflowException with HTTP 400 and its message alone.
            raise MlflowException.invalid_parameter_value(str(error)) from None
        return pd.DataFrame(self.system.rows(routing))

    def images(self, model_input) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` from pixels or from paths (decoded as in training)."""
        array = np.asarray(model_input)
        if array.ndim == 1 and array.dtype.kind in "OUS":
            if not all(isinstance(p, str) for p in array.tolist()):
                raise L2DError("input: a 1-D array must hold image file paths (strings)")
            if array.size == 0:
                raise L2DError("input: no image paths given")
            return self.system.check_images(read_image_files(array.tolist(), "input"))
        return self.system.check_images(array)


def signature(config: TrainConfig) -> ModelSignature:
    """Input: uint8 images of any shape (l2d checks theirs); output: the decision table's
    columns; parameter: ``workload``, by default the run's ``--test-workload``."""
    options = [*expert_names(config.train_files), CLASSIFIER]
    outputs = [ColSpec(DataType.string, "decision"), ColSpec(DataType.long, "expert_index"),
               ColSpec(DataType.string, "label"),
               *(ColSpec(DataType.double, f"score/{name}") for name in options)]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("workload", DataType.string, config.test_workload)]))


def log_deferral_system(config: TrainConfig, model_state, example_images: np.ndarray, *,
                        registered_model_name: str | None = None) -> str:
    """Log ``deferral_system`` to the active run (and register it under
    ``registered_model_name``); return its model URI."""
    with tempfile.TemporaryDirectory() as folder:
        system_folder = save_system(Path(folder) / SYSTEM_ARTIFACT, config, model_state)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={SYSTEM_ARTIFACT: str(system_folder)},
            code_paths=[str(Path(l2d.__file__).parent)],
            signature=signature(config),
            input_example=np.ascontiguousarray(example_images, np.uint8),
            pip_requirements=requirements(),
            registered_model_name=registered_model_name,
            metadata={"l2d_version": l2d.__version__, "method": config.method,
                      "experts": expert_names(config.train_files),
                      "classes": class_names(config), "image_shape": list(config.image_shape)},
        )
    return info.model_uri


def requirements() -> list[str]:
    """What the model needs to load, pinned to the versions it was logged with (l2d's own code
    travels with the model)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("jax", "jaxlib", "flax", "numpy", "scipy", "pandas", "mlx-data", "mlflow",
                    "psutil"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def load_trained_system(tracking_uri: str, run_id: str) -> TrainedSystem:
    """The ``TrainedSystem`` inside the ``deferral_system`` model of ``run_id`` in the store
    ``tracking_uri``, loaded through MLflow as a served model is; L2DError if the run has none."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except MlflowException as error:
        line = first_line(error)
        raise L2DError(f"--run-id={run_id}: no {MODEL_NAME} model to load ({line[:200]}); "
                       f"a run trained before l2d logged it needs `l2d export --run-id "
                       f"{run_id}`") from None
    return model.unwrap_python_model().system
