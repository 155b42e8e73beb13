"""A run's folder on disk, ``<--artifact-path>/<run_id>/``: its configuration (``config.json``,
the flat ``TrainConfig.to_dict``) and its checkpoints (``checkpoints/``, ``l2d.checkpoint``).

Training, ``--test``, ``l2d export`` and ``l2d predict`` reach a run's files through here only:
where the folder is, saving and reading the configuration (with the flags a command may change),
and restoring the latest state (to resume) or the state in use (the selected one, to test,
export and serve).
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

from l2d.config import DEFAULT_POINT, LAST_EPOCH, TrainConfig
from l2d.errors import L2DError
from l2d.options import flag_of, shown

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def check_writable(artifact_path: str) -> None:
    """L2DError unless the folder of the runs' folders can be created and written."""
    folder = Path(artifact_path).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # One probe per process: processes of one multi-host job check the same folder at once.
        probe = folder / f".l2d-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise L2DError(
            f"--artifact-path={artifact_path}: not writable ({error.strerror})") from None


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: Path
    run_id: str

    @classmethod
    def of(cls, artifact_path: str, run_id: str) -> "RunFolder":
        return cls(Path(artifact_path).expanduser().resolve() / run_id, run_id)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def save_config(self, config: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.config_file)

    def load_config(self, *, flag: str = "--run-id") -> TrainConfig:
        """The run's stored configuration; L2DError naming ``flag`` (the flag that named the
        run) when there is none."""
        if not self.config_file.is_file():
            raise L2DError(f"{flag}={self.run_id}: no {self.config_file} (is --artifact-path "
                           "right?)")
        return TrainConfig.load(self.config_file)

    def stored_config(self, given: dict[str, Any], *, changeable: frozenset[str]
                      ) -> TrainConfig:
        """The run's saved config, with the flags in ``changeable`` taken from ``given`` (the
        flags typed).

        Any other flag typed with a value different from the run's is an error: a resumed run
        must continue exactly, and a silently ignored flag would lie.
        """
        stored = self.load_config()
        values = stored.to_dict()
        for name, value in given.items():
            # A flag the run's method does not read is left to the method's check, which names
            # the methods that read it.
            if name in values and name not in changeable and values[name] != value:
                # The cosine schedule spans the epochs set at the start: more epochs would
                # change every step's learning rate, so the numbers would match neither run.
                why = ("; the learning rate decays over the epochs the run was started with, so "
                       "a longer training is a new run" if name == "num_epochs" else "")
                raise L2DError(f"{flag_of(name)}={shown(value)}: run {self.run_id} was trained "
                               f"with {shown(values[name])}{why}; omit the flag to use the run's "
                               "value")
        return stored.replace(**{k: v for k, v in given.items() if k in changeable})

    def restore(self, method, training, parallel, *, total_steps: int = 1,
                abstract_totals=None, selected: bool = False):
        """``(graphdef, checkpoint.Restored)``: the latest checkpoint of the run (or, with
        ``selected``, the best one ``--select-by`` kept), restored into the state of ``method``
        trained by ``training`` (``total_steps`` sets the schedule the graphdef carries;
        evaluation needs none), placed as ``parallel`` places states."""
        from l2d import checkpoint
        from l2d.train_state import build_state

        graphdef, template = build_state(method, training, total_steps=total_steps,
                                         abstract=True)
        abstract = parallel.abstract(template)
        if selected:
            return graphdef, checkpoint.restore_best(self.checkpoints, abstract,
                                                     seed=training.seed, method=method.name)
        restored = checkpoint.restore_latest(
            self.checkpoints, abstract, seed=training.seed, method=method.name,
            abstract_totals=abstract_totals)
        return graphdef, restored

    def restore_in_use(self, config: TrainConfig, method, parallel):
        """``(graphdef, checkpoint.Restored)`` of the checkpoint the run is used with: the one
        ``--select-by`` selected, else the latest; L2DError when its ``--operating-point``
        needs an offset the checkpoint lacks (a state saved mid-epoch, never evaluated)."""
        graphdef, restored = self.restore(
            method, config.training, parallel,
            selected=config.selection.select_by != LAST_EPOCH)
        if config.selection.operating_point != DEFAULT_POINT and "offset" not in restored.extra:
            raise L2DError(f"--run-id={self.run_id}: its checkpoint "
                           f"{restored.position.describe()} was saved before its evaluation, so "
                           f"it has no --operating-point {config.selection.operating_point}; "
                           "resume the run to the end of that epoch")
        return graphdef, restored

    def trained_model(self, parallel, *, flag: str = "--run-id"):
        """``(method, model)``: the run's method, built from its stored configuration, and its
        model as its checkpoint in use holds it (``restore_in_use``; ``flag``: as for
        ``load_config``)."""
        from flax import nnx

        from l2d.train_state import method_of

        config = self.load_config(flag=flag)
        method = method_of(config)
        graphdef, restored = self.restore_in_use(config, method, parallel)
        return method, nnx.merge(graphdef, restored.state)[0]
