"""Evaluation: routing a split and counting (``evaluate``), the metrics (``metrics``), the
accuracy-coverage curves (``accuracy_coverage``), a stored run's checkpoint evaluated again
(``stored_run``) and the plots of runs (``plot``, which imports no JAX)."""
