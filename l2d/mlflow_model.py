"""What the entry file of a ``deferral_system`` model logged by l2d before ``l2d.serving``
existed imports (``from l2d.mlflow_model import DeferralSystemModel``): with it, such a model
also loads in a process that runs this l2d (``l2d predict``, ``l2d.load_model``)."""

from l2d.serving.pyfunc import DeferralSystemModel

__all__ = ["DeferralSystemModel"]
