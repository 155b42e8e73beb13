"""The trained system as an MLflow model (``mlflow.pyfunc``) named ``deferral_system``.

The model carries the folder of ``l2d.serving.trained_system`` as its one artifact and l2d's own
code (``code_paths``), so that it loads wherever l2d's dependencies are installed, with the code
that trained it. ``predict`` takes a batch of images, either uint8 pixels ``[N, H, W, C]`` or, from
Python only, image file paths as a 1-D numpy array of dtype object (a served model never opens
files named in a request), and returns one row per image: ``decision``
("classifier" or the expert's name), ``expert_index`` (-1 when the classifier keeps it),
``label`` (the classifier's class when it keeps the image, else empty) and ``score/<option>`` for
every option.

The signature declares no input schema, on purpose: MLflow's tensor schema would cast a JSON body
to its dtype without a word (pixels scaled to [0, 1] become 0 as uint8) and quote the whole input
in its errors. So every input reaches l2d, which takes uint8 pixels (or integers in 0..255, as
JSON gives them), refuses anything else in one line (``TrainedSystem.check_images``), and answers
an empty batch with an empty table. The metadata's ``input`` says what the model takes.
The parameter ``workload`` ("argmax" or "enforce") overrides the run's ``--test-workload``.
"""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

import l2d
from l2d.config import TrainConfig
from l2d.errors import L2DError, first_line
from l2d.serving.trained_system import (
    TrainedSystem,
    class_names,
    read_image_files,
    save_system,
)
from l2d.tracking import CHECKPOINTS_TAG

MODEL_NAME = "deferral_system"
SYSTEM_ARTIFACT = "system"


class DeferralSystemModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of ``TrainedSystem`` (see the module docstring)."""

    def load_context(self, context) -> None:
        """Load the trained system from the model's one artifact, its folder."""
        self.system = TrainedSystem(Path(context.artifacts[SYSTEM_ARTIFACT]))

    # The ndarray hint is what MLflow hands over without an input schema; it infers nothing from it.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        """The decision table of a batch (see the module docstring); ``params["workload"]``
        overrides the run's routing."""
        try:
            images = self.images(model_input)
            workload = (params or {}).get("workload") or None
            routing = self.system.route(*self.system.score(images), workload=workload)
        except L2DError as error:
            raise InputError(str(error)) from None
        return pd.DataFrame(self.system.rows(routing))

    def images(self, model_input) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` from pixels or from paths (decoded as in training)."""
        array = np.asarray(model_input)
        if array.ndim == 1 and array.size and array.dtype.kind in "US":
            # What JSON strings become: a served model never opens files its callers name.
            raise L2DError("input: image file paths are taken from Python only, as a numpy "
                           "array of dtype object; over HTTP send pixels")
        if array.ndim == 1 and array.size and array.dtype.kind == "O":
            if not all(isinstance(p, str) for p in array.tolist()):
                raise L2DError("input: a 1-D array must hold image file paths (strings)")
            return self.system.check_images(read_image_files(array.tolist(), "input"))
        return self.system.check_images(array)


class InputError(MlflowException):
    """What ``predict`` raises for input it cannot route: HTTP 400 when served, with l2d's one
    line as the whole message.

    MLflow's scoring server prefixes the message of a failed prediction with the entire input it
    received (``e.message = f"Failed to predict data '{data}'..."``), which buries the line that
    says what is wrong under a dump of pixels; this message keeps its first value.
    """

    def __init__(self, line: str):
        self._line = line
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        pass  # Set by MlflowException.__init__ (the same line) and by the scoring server.


def signature(config: TrainConfig) -> ModelSignature:
    """No input schema (the module docstring says why); output: the decision table's columns;
    parameter: ``workload``, by default the run's ``--test-workload``."""
    options = config.data.options()
    outputs = [ColSpec(DataType.string, "decision"), ColSpec(DataType.long, "expert_index"),
               ColSpec(DataType.string, "label"),
               *(ColSpec(DataType.double, f"score/{name}") for name in options)]
    return ModelSignature(
        inputs=None,
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("workload", DataType.string,
                                      config.evaluation.test_workload)]))


def log_deferral_system(config: TrainConfig, model_state, example_images: np.ndarray, *,
                        offset: float = 0.0, registered_model_name: str | None = None) -> str:
    """Log ``deferral_system``, routing at the operating point's ``offset``, to the active run
    (and register it under ``registered_model_name``); return its model URI."""
    with tempfile.TemporaryDirectory() as folder:
        system_folder = save_system(Path(folder) / SYSTEM_ARTIFACT, config, model_state,
                                    offset=offset)
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
                      "experts": config.data.experts(), "classes": class_names(config.data),
                      "image_shape": list(config.data.image_shape),
                      "operating_point": config.selection.operating_point,
                      "classifier_offset": offset,
                      "input": f"uint8 images [N, {', '.join(map(str, config.data.image_shape))}] "
                               "(integers 0..255 in JSON), or image file paths (Python)"},
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


def load_deferral_system(tracking_uri: str, run_id: str):
    """The ``deferral_system`` pyfunc model of ``run_id`` in the store ``tracking_uri``, as
    ``mlflow.pyfunc.load_model`` (and a server) loads it; L2DError, one line, saying why a run
    has none and what can be done."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except MlflowException as error:
        raise L2DError(without_model(tracking_uri, run_id, first_line(error))) from None


def without_model(tracking_uri: str, run_id: str, problem: str) -> str:
    """Why ``run_id`` has no model to load, and what can be done about it."""
    from l2d.checkpoint import saved_positions

    try:
        run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        return f"--run-id={run_id}: no such run in {tracking_uri}"
    status = run.info.status
    if run.outputs and run.outputs.model_outputs:
        return f"--run-id={run_id}: its {MODEL_NAME} model does not load ({problem[:200]})"
    folder = run.data.tags.get(CHECKPOINTS_TAG)
    positions = saved_positions(Path(folder)) if folder else []
    if not positions:
        return (f"--run-id={run_id}: the run is {status} and has no {MODEL_NAME} model, nor a "
                "checkpoint to make one from: there is nothing to serve")
    export = (f"`l2d export --run-id {run_id}` logs one from its latest checkpoint "
              f"({positions[-1].describe()})")
    if status == "FINISHED":
        return (f"--run-id={run_id}: no {MODEL_NAME} model to load; a run trained before l2d "
                f"logged it needs it: {export}")
    if status == "RUNNING":
        return (f"--run-id={run_id}: the run is RUNNING (still training, or killed by SIGKILL) "
                f"and has no {MODEL_NAME} model yet; {export}")
    return (f"--run-id={run_id}: the run is {status}: it ended before logging its "
            f"{MODEL_NAME} model; {export}, or `l2d train --resume --run-id {run_id}` finishes "
            "its training")


def load_trained_system(tracking_uri: str, run_id: str) -> TrainedSystem:
    """The ``TrainedSystem`` inside the ``deferral_system`` model of ``run_id``, loaded through
    MLflow as a served model is (see ``load_deferral_system``)."""
    return load_deferral_system(tracking_uri, run_id).unwrap_python_model().system
