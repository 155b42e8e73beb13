"""A trained system outside training: its folder and routing (``trained_system``), the MLflow
model ``deferral_system`` (``pyfunc``, with its entry file ``model_code.py``), ``l2d predict``
(``predict``) and ``l2d export`` (``export``)."""
