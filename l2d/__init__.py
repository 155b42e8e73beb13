"""l2d: learning to defer to K human experts in JAX, by EM or a surrogate loss (l2d.methods).

Importing the package touches no device and reads no global state; the heavy modules
(``l2d.train``, ``l2d.evaluate``) are imported only by the commands that need them.
"""

import time

__version__ = "0.1.0"

# When the package was first imported, i.e. when an l2d command started: start-up times count
# from here, not from the process's start, which under run.sh (a shell that execs Python) would
# include setting up .venv.
IMPORTED_AT = time.time()


def load_model(run_id: str, tracking_uri: str | None = None):
    """The MLflow model ``deferral_system`` of ``run_id`` (``mlflow.pyfunc.load_model`` of
    ``runs:/ID/deferral_system``), from ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``,
    else ``./mlflow.db``). A run without one raises ``l2d.errors.L2DError`` with one line
    saying why (its status) and what can be done."""
    import os

    from l2d.mlflow_model import load_deferral_system
    from l2d.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    return load_deferral_system(uri, run_id)
