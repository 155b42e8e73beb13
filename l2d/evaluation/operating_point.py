"""The operating point: the offset b added to the classifier's score against the experts'
scores, chosen on a validation split's accuracy-coverage curve and applied to new inputs.

``default`` is b = 0 (the method's own argmax). ``best-val`` is the offset of the curve point of
the highest validation accuracy, the one nearest the default among equals (b = 0 itself when the
default's point is one of them). ``coverage=X`` is the offset of the point whose validation
coverage is nearest X (among equals, the nearest the default). With b, an input is kept by the
classifier iff its score + b exceeds the best available expert's.
"""

import numpy as np

from l2d.config import BEST_VAL, DEFAULT_POINT, parse_operating_point
from l2d.evaluation.accuracy_coverage import AccuracyCoverageCurve


def operating_offset(curve: AccuracyCoverageCurve, operating_point: str) -> float:
    """The offset ``operating_point`` (a ``--operating-point`` value) chooses on ``curve``."""
    point = parse_operating_point(operating_point)
    if point == DEFAULT_POINT:
        return 0.0
    if point == BEST_VAL:
        candidates = np.flatnonzero(curve.accuracy == curve.accuracy.max())
    else:
        distance = np.abs(curve.coverage - point)
        candidates = np.flatnonzero(distance == distance.min())
    nearest_default = candidates[np.argmin(np.abs(curve.offset[candidates]))]
    return float(curve.offset[nearest_default])


def with_offset(scores: np.ndarray, offset: float) -> np.ndarray:
    """``scores`` ``[N, K + 1]`` with ``offset`` added to the classifier's (the last column), in
    float64 (the precision of the curve's margins, so a chosen point is routed as it was
    measured); as they are for offset 0."""
    if offset == 0:
        return scores
    shifted = np.array(scores, dtype=np.float64)
    shifted[:, -1] += offset
    return shifted
