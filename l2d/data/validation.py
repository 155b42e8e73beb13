"""A validation split held out of the training manifests: seeded and stratified by true class.

``--val-fraction F`` takes round(F x n_c) of the n_c training inputs of each class c, drawn from
``--seed``, so the held-out share of every class is F up to rounding and the same flags give
the same split on every machine; the rest is the training split. (``--val-groundtruth-file``
and ``--val-files`` name a validation split of its own instead.)
"""

import numpy as np

from l2d.data.manifest import SplitRecords
from l2d.errors import L2DError

# Mixed into the seed so that the split draws numbers of its own, not those of initialisation.
_STREAM = 0x56414C  # "VAL"


def validation_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The sorted rows of the validation split: round(fraction x n_c) rows of each class c."""
    rng = np.random.default_rng([seed, _STREAM])
    held_out = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        held_out.append(rng.permutation(rows)[:round(fraction * rows.size)])
    return np.sort(np.concatenate(held_out))


def hold_out(split: SplitRecords, fraction: float, seed: int
             ) -> tuple[SplitRecords, SplitRecords]:
    """(training, validation) parts of ``split``; L2DError naming the manifest when either
    would be empty."""
    rows = validation_rows(split.labels, fraction, seed)
    if rows.size == 0 or rows.size == split.num_samples:
        part = "no input" if rows.size == 0 else "every input"
        raise L2DError(f"--val-fraction={fraction:g}: holds out {part} of the "
                       f"{split.num_samples} of {split.groundtruth_path}")
    kept = np.setdiff1d(np.arange(split.num_samples), rows)
    return split.subset(kept), split.subset(rows)
