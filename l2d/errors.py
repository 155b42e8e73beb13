"""The one exception type for mistakes a user can fix (bad files, flags, unreachable servers)."""


class L2DError(Exception):
    """A user-facing error: the CLI prints its one-line message to stderr and exits with code 2.

    The message must name the file, the entry and the problem, so that no traceback is needed.
    """


class TrainingDiverged(Exception):
    """A logged metric is NaN or infinite: training stops, the last good checkpoint is kept."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, acted on at a safe point of the training loop (see ``l2d.signals``).

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` never swallows it.
    ``run_id`` is the run it ended (None before one existed); ``saved`` says where its state was
    saved (None when a second signal stopped it at once).
    """

    def __init__(self, message: str, *, saved: str | None = None):
        super().__init__(message)
        self.saved = saved
        self.run_id: str | None = None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line L2DError quotes of a library's multi-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
