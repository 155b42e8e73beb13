"""Orbax checkpoints of a run: the method's model and optimizer state, the method's name and the
next epoch.

The data order, augmentation and Monte Carlo draws of epoch e are pure functions of (seed, e),
so the epoch to continue from (with the seed, checked on restore) is the whole RNG/data-order
state: a run restored at epoch e replays exactly what the interrupted run would have done.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from l2d.errors import L2DError, first_line


def open_manager(directory: Path, *, keep: int) -> ocp.CheckpointManager:
    """A manager that never deletes what it finds at start; it only keeps the newest ``keep``.

    Saves are asynchronous in one process; with several, each save completes before training goes
    on, so that no process can leave while another still waits for it to finish a save.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=jax.process_count() == 1)
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state: nnx.State, *, next_epoch: int, seed: int,
         method: str) -> None:
    """Save asynchronously under step ``next_epoch`` (the number of finished epochs)."""
    manager.save(
        next_epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(
                {"next_epoch": next_epoch, "seed": seed, "method": method}),
        ),
    )


def restore_latest(
    directory: Path, abstract_state: nnx.State, *, seed: int, method: str
) -> tuple[nnx.State, int]:
    """Return (state, next_epoch) of the newest checkpoint in ``directory``.

    L2DError if there is none, or if it was made with another seed or method, or holds a state of
    another shape (a checkpoint of an older l2d, or of other networks).
    """
    latest = None
    if directory.is_dir():
        manager = ocp.CheckpointManager(directory)
        latest = manager.latest_step()
    if latest is None:
        raise L2DError(f"{directory}: no checkpoint to resume from or evaluate")
    checkpoint = directory / str(latest)
    try:
        progress = manager.restore(
            latest, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        if progress["seed"] != seed:
            raise L2DError(f"{checkpoint}: made with seed {progress['seed']}, not {seed}")
        # Checkpoints of l2d before --method existed record none (and hold another state).
        made_with = progress.get("method", "em of an older l2d")
        if made_with != method:
            raise L2DError(f"{checkpoint}: made with --method {made_with}, not {method}; it "
                           f"cannot be resumed or evaluated as {method}")
        try:
            state = manager.restore(
                latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )["state"]
        except (ValueError, KeyError, TypeError) as error:
            line = first_line(error)
            raise L2DError(f"{checkpoint}: does not fit the {method} model of this configuration "
                           f"({line[:200]})") from None
    finally:
        manager.close()
    return state, int(progress["next_epoch"])

