"""Both trackers fulfil the ``Tracker`` protocol completely, with the same signatures."""

import inspect

import pytest

from l2d.tracking import MlflowTracker, NullTracker, Tracker

PROTOCOL_METHODS = [name for name, member in vars(Tracker).items()
                    if callable(member) and not name.startswith("_")]


def test_the_protocol_names_what_training_uses():
    assert set(PROTOCOL_METHODS) == {"run", "run_exists", "run_status", "run_url", "log_params",
                                     "log_metrics",
                                     "log_dict", "log_dict_to", "set_tags", "log_dataset"}


@pytest.mark.parametrize("tracker", [MlflowTracker, NullTracker])
def test_every_tracker_implements_every_protocol_method(tracker):
    for name in PROTOCOL_METHODS:
        implementation = getattr(tracker, name, None)
        assert implementation is not None, f"{tracker.__name__} lacks {name}"
        assert (list(inspect.signature(implementation).parameters)
                == list(inspect.signature(getattr(Tracker, name)).parameters)), name


def test_the_null_tracker_logs_nothing_and_yields_a_run():
    tracker = NullTracker()
    with tracker.run(experiment_name="e", description="d") as run_id:
        tracker.log_metrics({"accuracy": 1.0}, step=1)
        tracker.log_dict({"a": 1}, "a.json")
        tracker.log_dict_to(run_id, {"a": 1}, "a.json")
    assert run_id == "" and tracker.run_exists("x") and tracker.uri
