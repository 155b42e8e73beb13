"""MLflow tracking of runs: the bottom of l2d, importing nothing of it but its errors.

Only this module and the MLflow model of ``l2d.serving`` import mlflow. Training logs through a
``Tracker``; ``l2d plot``, ``l2d runs`` and ``l2d export`` read (and add to) existing runs
through ``MlflowTracker``'s reading methods.

The default store is embedded (``sqlite:///<cwd>/mlflow.db``, artifacts in ``<cwd>/mlartifacts``),
so nothing has to be started; ``--tracking-uri http://...`` talks to ``mlflow_server.sh``.
Every run this module starts ends FINISHED, FAILED or KILLED, never RUNNING.
"""

import contextlib
import json
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from l2d.errors import Interrupted, L2DError, first_line

# MLflow's import-time and per-call chatter (progress bars, URLs, telemetry) is off unless the
# user set these variables themselves.
QUIET_ENVIRONMENT = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

# Servers, the embedded sqlite store, and the databases MLflow's SQL store speaks (their Python
# drivers are not installed by requirements.txt).
SUPPORTED_SCHEMES = ("http://", "https://", "sqlite:///", "postgresql://", "mysql://", "mssql://")

# Seconds to wait for a tracking server's /health before giving up.
HEALTH_TIMEOUT_S = 5

# The tags l2d sets on a run: the folder of its checkpoints, the training measurements it
# reports (comma-separated), and its experts' names (a JSON list, in --train-files order).
CHECKPOINTS_TAG = "checkpoints"
MEASUREMENTS_TAG = "measurements"
EXPERTS_TAG = "experts"
# The run's free-text description, as MLflow stores it (``--run-description``).
DESCRIPTION_TAG = "mlflow.note.content"


def resolve_tracking_uri(uri: str | None) -> str:
    """None -> ``sqlite:///<cwd>/mlflow.db``; a relative sqlite path -> an absolute one."""
    if uri is None:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def json_safe(values: Any) -> Any:
    """``values`` with NaN and infinities as None, so that artifacts are strict JSON."""
    if isinstance(values, dict):
        return {k: json_safe(v) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [json_safe(v) for v in values]
    if isinstance(values, float) and not math.isfinite(values):
        return None
    return values


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str) -> None:
    """Fail fast, before any training work, if the tracking store cannot be used."""
    if not uri.startswith(SUPPORTED_SCHEMES):
        raise L2DError(
            f"--tracking-uri={uri}: unsupported; use http(s)://HOST:PORT (a tracking server), "
            "sqlite:///ABSOLUTE/PATH.db or a database URI (postgresql://, mysql://, mssql://)")
    if is_remote(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            problem = str(getattr(error, "reason", error))
        raise L2DError(
            f"--tracking-uri={uri}: MLflow server not reachable ({problem}); "
            "start it with ./mlflow_server.sh or omit --tracking-uri for the local store")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder, os.W_OK):
            raise L2DError(f"--tracking-uri={uri}: folder {folder} is not writable")


def import_mlflow():
    """Import mlflow quietly (it costs seconds; ``train`` does it beside other work)."""
    user_chose_level = "MLFLOW_LOGGING_LEVEL" in os.environ
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import mlflow

    if not user_chose_level:
        # The variable works only if mlflow was not imported yet (e.g. by a caller's code).
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow


# MLflow 3.17's UI opens an experiment in its GenAI view (traces, evaluations) unless the address
# asks for the model-training one (checked with headless Chromium on an l2d run).
TRAINING_VIEW = "?workflowType=machine_learning"
UI_ADDRESS = f"http://127.0.0.1:5000/#/experiments{TRAINING_VIEW}"


class Tracker(Protocol):
    """What training and evaluation log through; ``MlflowTracker`` and ``NullTracker`` fulfil it."""

    uri: str

    def run(self, *, experiment_name: str, description: str, run_name: str | None = None,
            run_id: str | None = None) -> AbstractContextManager[str]:
        """Start (or, with ``run_id``, reopen) a run; yield its id; always end it with a status."""

    def run_exists(self, run_id: str) -> bool: ...

    def run_status(self, run_id: str) -> str | None:
        """RUNNING, FINISHED, FAILED or KILLED; None when there is no such run."""

    def run_url(self, run_id: str) -> str: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None: ...

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        """Log ``values`` as a JSON artifact of the active run."""

    def log_dict_to(self, run_id: str, values: dict[str, Any], artifact_file: str) -> None:
        """Log to a run without reopening it, so its status (FINISHED, KILLED...) stays as it is."""

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_dataset(self, *, name: str, digest: str, source: str, context: str) -> None:
        """Record a dataset the active run used (MLflow's Dataset column): ``source`` is the
        path of its manifest, ``context`` what the run used it for (train, test)."""


class MlflowTracker:
    """The ``Tracker`` of l2d: a thin layer over MLflow's fluent API for one run at a time."""

    def __init__(self, uri: str):
        # Imported here, not at the top: it costs seconds and `l2d --help` must stay instant.
        mlflow = import_mlflow()
        self._mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        try:
            self.client = mlflow.MlflowClient(uri)
            self.client.search_experiments(max_results=1)
        except Exception as error:  # Any driver or store error: the store is unusable.
            line = first_line(error)
            raise L2DError(
                f"--tracking-uri={uri}: cannot open the tracking store: {line}") from None

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage != "active":
                raise L2DError(
                    f"--experiment-name={name}: the experiment is deleted in {self.uri}; restore "
                    "it (mlflow experiments restore) or choose another name")
            return experiment.experiment_id
        # A local store gets an explicit artifact folder beside the database; a server chooses its
        # own (it serves artifacts), so nothing is set there.
        location = None
        if self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name
            location = folder.as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except self._mlflow.exceptions.MlflowException as error:
            raise L2DError(f"--experiment-name={name}: {error.message}") from None

    def run_exists(self, run_id: str) -> bool:
        return self.run_status(run_id) is not None

    def run_status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except self._mlflow.exceptions.MlflowException:
            return None

    @contextlib.contextmanager
    def run(
        self, *, experiment_name: str, description: str, run_name: str | None = None,
        run_id: str | None = None
    ) -> Iterator[str]:
        """Start (or, with ``run_id``, reopen) a run; yield its id; always end it with a status.

        FINISHED when the body returns, KILLED on Ctrl-C or SIGTERM, FAILED on any exception.
        """
        experiment_id = None if run_id else self._experiment_id(experiment_name)
        active = self._mlflow.start_run(
            run_id=run_id, experiment_id=experiment_id, description=description or None,
            run_name=None if run_id else run_name, log_system_metrics=True,
        )
        status = "FAILED"
        try:
            yield active.info.run_id
            status = "FINISHED"
        except (KeyboardInterrupt, Interrupted):
            status = "KILLED"
            raise
        finally:
            self._mlflow.end_run(status=status)

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: "" if v is None else v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        self._mlflow.log_dict(json_safe(values), artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_dict_to(self, run_id: str, values: dict[str, Any], artifact_file: str) -> None:
        """Log to a run without reopening it, so its status (FINISHED, KILLED...) stays as it is."""
        self.client.log_dict(run_id, json_safe(values), artifact_file)

    def log_dataset(self, *, name: str, digest: str, source: str, context: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a path matches both.
            warnings.simplefilter("ignore", UserWarning)
            dataset_source = resolve_dataset_source(source)
        self._mlflow.log_input(MetaDataset(dataset_source, name=name, digest=digest),
                               context=context)

    @contextlib.contextmanager
    def reopened(self, run_id: str) -> Iterator[None]:
        """``run_id`` as the active run meanwhile (MLflow logs a model only to an active run),
        its status and end time left as they were."""
        before = self.client.get_run(run_id).info
        self._mlflow.start_run(run_id=run_id)
        try:
            yield
        finally:
            self._mlflow.end_run(status=before.status)
            if before.end_time is not None:
                self.client.set_terminated(run_id, before.status, end_time=before.end_time)

    def get_run(self, run_id: str):
        """The run (MLflow's ``Run``: info, data.params, data.metrics, data.tags, outputs)."""
        return self.client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list:
        """Every logged point of one metric (MLflow's ``Metric``: step, value, timestamp)."""
        return self.client.get_metric_history(run_id, key)

    def read_json_artifact(self, run_id: str, artifact_file: str) -> Any:
        """The JSON artifact of a run; L2DError (one line) when it is missing or unreadable."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = self.client.download_artifacts(run_id, artifact_file, folder)
                return json.loads(Path(path).read_text())
            except (self._mlflow.exceptions.MlflowException, OSError, ValueError):
                raise L2DError(f"run {run_id}: no readable artifact {artifact_file}") from None

    def log_artifact_to(self, run_id: str, local_path: Path, folder: str) -> None:
        """Log a file to ``folder/`` of a run without reopening it."""
        self.client.log_artifact(run_id, str(local_path), folder)

    def search_runs(self, *, status: str | None, experiment_name: str | None) -> list:
        """The runs of the store (of ``experiment_name`` if given) with ``status`` (any if
        None), newest first."""
        if experiment_name is None:
            experiments = [e.experiment_id for e in self.client.search_experiments()]
        else:
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise L2DError(f"--experiment-name={experiment_name}: no such experiment in "
                               f"{self.uri}")
            experiments = [experiment.experiment_id]
        if not experiments:
            return []
        return self.client.search_runs(
            experiments, filter_string=f"attributes.status = '{status}'" if status else "",
            order_by=["attributes.start_time DESC"])

    def run_url(self, run_id: str) -> str:
        experiment_id = self.client.get_run(run_id).info.experiment_id
        base = self.uri.rstrip("/") if is_remote(self.uri) else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


class NullTracker:
    """The ``Tracker`` of processes other than process 0 in multi-host training: logs nothing."""

    uri = "(process 0 logs)"

    @contextlib.contextmanager
    def run(self, *, experiment_name: str, description: str, run_name: str | None = None,
            run_id: str | None = None) -> Iterator[str]:
        yield ""  # The real id comes from process 0 (``DataParallel.share_run_id``).

    def run_exists(self, run_id: str) -> bool:
        return True

    def run_status(self, run_id: str) -> str | None:
        return "RUNNING"  # Process 0 checks the run.

    def run_url(self, run_id: str) -> str:
        return f"(run {run_id}, logged by process 0)"

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        pass

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_dict_to(self, run_id: str, values: dict[str, Any], artifact_file: str) -> None:
        pass

    def log_dataset(self, *, name: str, digest: str, source: str, context: str) -> None:
        pass


def open_store(uri: str) -> MlflowTracker:
    """A tracker on an existing store (a missing sqlite file is not silently created)."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise L2DError(f"--tracking-uri={uri}: no tracking store ({database} does not exist)")
    check_reachable(uri)
    return MlflowTracker(uri)


def open_run_store(uri: str | None, run_id: str) -> MlflowTracker:
    """The tracker of an existing store (``uri`` as ``--tracking-uri`` gives it) that holds
    ``run_id``."""
    tracker = open_store(resolve_tracking_uri(uri))
    if not tracker.run_exists(run_id):
        raise L2DError(f"--run-id={run_id}: no such run in {tracker.uri}")
    return tracker
