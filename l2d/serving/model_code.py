"""The file MLflow runs to build the ``deferral_system`` model when it loads it ("models from
code"): no pickled object travels with the model, only this file, l2d's code and the weights."""

import mlflow

from l2d.serving.pyfunc import DeferralSystemModel

mlflow.models.set_model(DeferralSystemModel())
