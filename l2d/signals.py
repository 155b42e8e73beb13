"""Ctrl-C and SIGTERM during a run: stop at the next safe point, not in the middle of a write.

Python's default Ctrl-C raises wherever the main thread happens to be, for example inside an
asynchronous orbax save or an MLflow call, which can leave a half-written checkpoint and noisy
tracebacks from their worker threads. Inside ``StopRequests`` a first signal only sets a flag that
the training loop checks after every step, where it saves the run's state before it stops; a
second signal raises at once, without saving, for a user who insists.
"""

import signal
from types import FrameType

from l2d.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into a flag, checked with ``check()``."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise Interrupted(f"signal {signum} received twice")
        self.received = signum

    @property
    def requested(self) -> bool:
        """Whether a signal came since the run started."""
        return self.received is not None

    def check(self) -> None:
        """Raise Interrupted if a signal came since the run started."""
        if self.received is not None:
            raise Interrupted(f"signal {self.received}")
