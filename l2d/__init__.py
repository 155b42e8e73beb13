"""l2d: learning to defer to K human experts in JAX, by EM or a surrogate loss (l2d.methods).

The Python entry points, the same code paths as the commands:

- ``l2d.train(config)``: train a run of a ``l2d.config.TrainConfig`` (``l2d train``); returns
  ``l2d.training.RunResult`` (``run_id``, ``metrics``);
- ``l2d.evaluate_run(config, run_id)``: evaluate a run's latest checkpoint (``l2d train
  --test``); returns its test metrics;
- ``l2d.load_model(run_id)``: the run's MLflow model ``deferral_system``, as a server loads it.

Importing the package touches no device and reads no global state; the heavy modules are
imported only by the functions and commands that need them.
"""

import time

__version__ = "0.1.0"

# When the package was first imported, i.e. when an l2d command started: start-up times count
# from here, not from the process's start, which under run.sh (a shell that execs Python) would
# include setting up .venv.
IMPORTED_AT = time.time()


def train(config, *, resume_run_id: str | None = None, register_model: str | None = None):
    """Train the run ``config`` describes (or, with ``resume_run_id``, continue that run, whose
    stored configuration ``config`` must be); return ``RunResult(run_id, metrics)``.

    ``config`` is, e.g., ``TrainConfig.from_dict({...})`` of the flags' names and values (the
    docs' "Training" page shows one). Raises ``l2d.errors.L2DError`` (one line) for input that
    cannot work, before any run exists.
    """
    from l2d import jax_runtime

    config.validate()
    jax_runtime.start_jax(config.runtime)
    from l2d import training

    return training.train(config, resume_run_id=resume_run_id, register_model=register_model)


def evaluate_run(config, run_id: str) -> dict[str, float]:
    """Evaluate the checkpoint in use of ``run_id`` (the one ``--select-by`` selected, else the
    latest) on the test manifests of ``config`` (the run's stored configuration, perhaps with
    other test manifests); return the test metrics."""
    from l2d import jax_runtime

    config.validate()
    jax_runtime.start_jax(config.runtime)
    from l2d.evaluation.stored_run import evaluate_stored_run

    return evaluate_stored_run(config, run_id)


def load_model(run_id: str, tracking_uri: str | None = None):
    """The MLflow model ``deferral_system`` of ``run_id`` (``mlflow.pyfunc.load_model`` of
    ``runs:/ID/deferral_system``), from ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``,
    else ``./mlflow.db``). A run without one raises ``l2d.errors.L2DError`` with one line
    saying why (its status) and what can be done."""
    import os

    from l2d.serving.pyfunc import load_deferral_system
    from l2d.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    return load_deferral_system(uri, run_id)
