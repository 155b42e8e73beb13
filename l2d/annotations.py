"""The one fact every layer shares about expert annotations: the label that marks a missing one
(a file an expert's manifest omits, or ``"label": null``; ``--allow-missing-annotations``)."""

MISSING = -1
