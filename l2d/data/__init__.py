"""Data: JSON manifests -> validated records -> decoded images -> batches of NumPy arrays."""
