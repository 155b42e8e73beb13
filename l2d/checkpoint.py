"""Orbax checkpoints of a run: the method's model and optimizer state, where training stands, the
seed and the method's name.

A run keeps two kinds, side by side in its ``checkpoints/`` folder:

- ``<epoch>/``, every ``--checkpoint-every`` epochs and after the last, the newest
  ``--keep-checkpoints`` of them;
- ``interrupted/<n>/``, the state at a Ctrl-C or SIGTERM, mid-epoch included, with the epoch's
  partial sums of the training measurements; removed once a later epoch checkpoint exists. ``n``
  numbers the positions in order: ``epoch * (steps_per_epoch + 1) + step``, so that the end of
  an epoch's steps (not yet evaluated) and the start of the next are two numbers;
- ``best/<epoch>/``, with ``--select-by``, the state of the epoch with the best validation
  metric so far, the one checkpoint kept there.

Every checkpoint's progress record may carry what the run decided by then (``extra``): the
operating point's offset measured on the state it holds, and the selected epoch so far, so that
a resumed run compares the next epochs with the same best and ``--test`` routes as training did.

The data order, augmentation and Monte Carlo draws of step s of epoch e are pure functions of
(seed, e, s), so a ``Position`` (with the seed, checked on restore) is the whole RNG and data-order
state: a run restored there replays exactly what the interrupted run would have done.

Saves are synchronous: a failed write (a full disk) is reported at the save that failed, before
anything of the next epoch is trained or logged, and what it left half-written is removed.
"""

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx

from l2d.errors import L2DError, first_line

INTERRUPTED = "interrupted"
BEST = "best"
# What orbax writes a checkpoint into before it renames the folder to its step.
_TMP_GLOB = "*.orbax-checkpoint-tmp*"


class NoCheckpoint(L2DError):
    """A run's checkpoint folder holds no checkpoint."""


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    """Where training stands: ``epoch`` epochs finished, then ``step`` steps of the next one
    (``step`` equal to the steps of an epoch: trained, not yet evaluated)."""

    epoch: int
    step: int = 0

    def describe(self, steps_per_epoch: int | None = None) -> str:
        if self.step == 0:
            return f"after epoch {self.epoch}"
        of = f" of {steps_per_epoch}" if steps_per_epoch else ""
        return f"in epoch {self.epoch + 1} after step {self.step}{of}"


@dataclasses.dataclass(frozen=True)
class Restored:
    state: nnx.State
    position: Position
    # The measurements summed over the interrupted epoch's first ``position.step`` steps; None
    # at an epoch's end or when not asked for.
    totals: dict | None
    # What the run recorded with the state (``RunCheckpoints`` ``extra``); {} when nothing.
    extra: dict = dataclasses.field(default_factory=dict)


def _manager(directory: Path, *, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=keep is not None,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


class RunCheckpoints:
    """The checkpoints a training run writes (see the module docstring): the newest
    ``keep`` epoch checkpoints are kept (those found at start count), and interrupted states
    go once a later epoch checkpoint is saved."""

    def __init__(self, directory: Path, *, keep: int, seed: int, method: str):
        self.directory = directory
        self._progress = {"seed": seed, "method": method}
        self._epochs = _manager(directory, keep=keep)
        self._best: ocp.CheckpointManager | None = None

    def save_epoch(self, state: nnx.State, *, epoch: int, extra: dict | None = None) -> None:
        """Save the state after ``epoch`` finished epochs under step ``epoch``; an interrupted
        state saved before is older, and goes."""
        self._save(self._epochs, epoch, Position(epoch), extra, state=state)
        shutil.rmtree(self.directory / INTERRUPTED, ignore_errors=True)

    def save_best(self, state: nnx.State, *, epoch: int, extra: dict | None = None) -> None:
        """Save the state after ``epoch`` as the run's best; the one it replaces goes.

        A best of a later epoch can be there from a launch that stopped before its next epoch
        checkpoint: the resumed run trains those epochs again, exactly, so it goes too."""
        if self._best is None:
            self._best = _manager(self.directory / BEST, keep=1)
        for step in self._best.all_steps():
            if step >= epoch:
                self._best.delete(step)
        self._save(self._best, epoch, Position(epoch), extra, state=state)

    def save_interrupted(self, state: nnx.State, totals: dict, position: Position, *,
                         steps_per_epoch: int, extra: dict | None = None) -> None:
        """Save the state at ``position`` with the epoch's partial ``totals``; the training
        stops after it, so the folder is made and closed here."""
        manager = _manager(self.directory / INTERRUPTED, keep=1)
        try:
            self._save(manager, position.epoch * (steps_per_epoch + 1) + position.step,
                       position, extra, state=state, totals=totals)
        finally:
            manager.close()

    def latest_epoch(self) -> int | None:
        return self._epochs.latest_step()

    def _save(self, manager: ocp.CheckpointManager, step: int, position: Position,
              extra: dict | None, **trees) -> None:
        progress = {**self._progress, "next_epoch": position.epoch, "next_step": position.step,
                    **({"extra": extra} if extra else {})}
        args = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        try:
            saved = manager.save(step, args=ocp.args.Composite(
                progress=ocp.args.JsonSave(progress), **args))
        except (OSError, ValueError, RuntimeError) as error:
            for partial in manager.directory.glob(_TMP_GLOB):
                shutil.rmtree(partial, ignore_errors=True)
            last = self.latest_epoch()
            kept = (f"the last good checkpoint, epoch {last}, is kept" if last is not None
                    else "no checkpoint was saved before")
            reason = error.strerror if isinstance(error, OSError) and error.strerror else (
                first_line(error)[:200])
            raise L2DError(f"{manager.directory}: cannot save the checkpoint "
                           f"{position.describe()} ({reason}); {kept}") from None
        if not saved:  # orbax skips a step it already holds, or one below its latest.
            raise L2DError(f"{manager.directory}: holds a checkpoint {step} already, at or after "
                           f"{position.describe()}; move it away to save this one")

    def close(self) -> None:
        self._epochs.close()
        if self._best is not None:
            self._best.close()


def _progress_of(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        return manager.restore(step, args=ocp.args.Composite(
            progress=ocp.args.JsonRestore()))["progress"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise L2DError(f"{manager.directory / str(step)}: not a readable l2d checkpoint "
                       f"({first_line(error)[:200]})") from None


def _position(progress: dict) -> Position:
    return Position(int(progress["next_epoch"]), int(progress.get("next_step", 0)))


@contextlib.contextmanager
def _managers(directory: Path) -> Iterator[list[ocp.CheckpointManager]]:
    """Read-only managers of the run's epoch and interrupted checkpoints (those that exist),
    closed at the end."""
    managers = [_manager(folder) for folder in (directory, directory / INTERRUPTED)
                if folder.is_dir()]
    try:
        yield managers
    finally:
        for manager in managers:
            manager.close()


def saved_positions(directory: Path) -> list[Position]:
    """The positions of every checkpoint in ``directory``, oldest first (none: empty)."""
    with _managers(directory) as managers:
        return sorted(_position(_progress_of(manager, step))
                      for manager in managers for step in manager.all_steps())


def restore_latest(
    directory: Path, abstract_state: nnx.State, *, seed: int, method: str,
    abstract_totals: dict | None = None,
) -> Restored:
    """The newest checkpoint in ``directory``: an interrupted state if it is later than the last
    epoch checkpoint, else that. ``abstract_totals`` asks for an interrupted epoch's partial
    measurements too (training; evaluation needs only the state).

    NoCheckpoint if there is none; L2DError if it was made with another seed or method, or
    holds a state of another shape (a checkpoint of an older l2d, or of other networks).
    """
    with _managers(directory) as managers:
        return _restore_newest(managers, directory, abstract_state, seed=seed, method=method,
                               abstract_totals=abstract_totals)


def restore_best(directory: Path, abstract_state: nnx.State, *, seed: int, method: str
                 ) -> Restored:
    """The best checkpoint of a run with ``--select-by`` (``best/``); NoCheckpoint if none was
    saved yet, other errors as ``restore_latest``."""
    folder = directory / BEST
    if not folder.is_dir():
        raise NoCheckpoint(f"{folder}: no checkpoint selected on validation yet")
    manager = _manager(folder)
    try:
        return _restore_newest([manager], folder, abstract_state, seed=seed, method=method)
    finally:
        manager.close()


def _restore_newest(managers, directory: Path, abstract_state: nnx.State, *, seed: int,
                    method: str, abstract_totals: dict | None = None) -> Restored:
    candidates = []
    for manager in managers:
        step = manager.latest_step()
        if step is not None:
            progress = _progress_of(manager, step)
            candidates.append((_position(progress), progress, manager, step))
    if not candidates:
        raise NoCheckpoint(f"{directory}: no checkpoint to resume from or evaluate")
    position, progress, manager, step = max(candidates, key=lambda c: c[0])
    checkpoint = manager.directory / str(step)
    if progress["seed"] != seed:
        raise L2DError(f"{checkpoint}: made with seed {progress['seed']}, not {seed}")
    # Checkpoints of l2d before --method existed record none (and hold another state).
    made_with = progress.get("method", "em of an older l2d")
    if made_with != method:
        raise L2DError(f"{checkpoint}: made with --method {made_with}, not {method}; it "
                       f"cannot be resumed or evaluated as {method}")
    trees = {"state": abstract_state}
    partial = abstract_totals is not None and manager.directory.name == INTERRUPTED
    if partial:
        trees["totals"] = abstract_totals
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(tree) for name, tree in trees.items()}))
    except (ValueError, KeyError, TypeError) as error:
        line = first_line(error)
        raise L2DError(f"{checkpoint}: does not fit the {method} model of this configuration "
                       f"({line[:200]})") from None
    return Restored(restored["state"], position, restored["totals"] if partial else None,
                    progress.get("extra", {}))
