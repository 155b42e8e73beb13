"""The option declarations and what is derived from them: configurations from Python and from
files, the options a resumed or tested run may change, the parser's groups and the flags
reference."""

import json

import pytest
from conftest import raises_one_line

from l2d.cli import build_parser, train_option_groups
from l2d.config import TrainConfig, changeable
from l2d.options import flags_reference

MANIFESTS = {"train_files": ["a.json"], "train_groundtruth_file": "gt.json",
             "test_files": ["b.json"], "test_groundtruth_file": "gt.json"}


def test_a_configuration_from_python_names_a_misspelt_or_misplaced_option():
    raises_one_line(lambda: TrainConfig.from_dict({**MANIFESTS, "batchsize": 3}),
                    "'batchsize': no such option of l2d train")
    raises_one_line(lambda: TrainConfig.from_dict({**MANIFESTS, "method": "softmax",
                                                   "clf_width": 4}),
                    "--clf-width: only used by --method em, confidence, two_stage or selective, "
                    "not by --method softmax")
    config = TrainConfig.from_dict({**MANIFESTS, "method": "softmax", "width": 4})
    assert config.method_options.width == 4 and config.data.train_files == ("a.json",)
    raises_one_line(lambda: config.replace(e_step="mc"), "--e-step", "--method em")


@pytest.mark.parametrize(("values", "fragments"), [
    ({"batch_size": None}, ["--batch-size=None", "needs a value"]),
    ({"seed": "1"}, ["--seed='1'", "must be int"]),
    ({"augment": 1}, ["--augment=1", "must be bool"]),
    ({"lr": True}, ["--lr=True", "must be float"]),
    ({"norm_mean": [0.5, "x"], "norm_std": [1, 1]}, ["--norm-mean=0.5,x", "list of float"]),
    ({"clf_width": 2.5}, ["--clf-width=2.5", "must be int"]),
])
def test_values_of_the_wrong_type_are_one_line_errors(values, fragments):
    config = TrainConfig.from_dict({**MANIFESTS, **values})
    raises_one_line(config.validate, *fragments)


def test_a_stored_configuration_of_an_older_run_loads_with_other_methods_options(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MANIFESTS, "method": "softmax", "width": 8, "clf_width": 4,
                                "e_step": "mc", "image_shape": [8, 8, 3]}))
    config = TrainConfig.load(path)
    assert config.method_options.width == 8 and config.data.image_shape == (8, 8, 3)
    assert "clf_width" not in config.to_dict()
    path.write_text("[1, 2]")
    raises_one_line(lambda: TrainConfig.load(path), str(path), "not a JSON object")


def test_what_a_resumed_or_tested_run_may_change_follows_the_declarations():
    runtime = {"tracking_uri", "artifact_path", "jax_platform", "mem_frac", "prefetch_size",
               "num_threads", "tqdm", "cache_images", "compilation_cache",
               "compilation_cache_dir", "coordinator_address", "num_processes", "process_id"}
    assert changeable(testing=False) == runtime
    assert changeable(testing=True) == runtime | {
        "test_files", "test_groundtruth_file", "batch_size", "test_workload",
        "allow_missing_annotations"}


def test_the_parser_and_the_flags_reference_list_every_declared_option(capsys):
    groups = train_option_groups()
    titles = [title for title, _ in groups]
    assert titles[-6:] == ["methods em, confidence, two_stage and selective", "method em",
                           "methods softmax, ova, rs and asm", "method rs", "method confidence",
                           "method two_stage"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert all(f"{title}:" in help_text for title in titles)
    reference = flags_reference(groups)
    for _, declared in groups:
        for item in declared:
            assert item.flag in help_text and f"`{item.flag}" in reference, item.flag
    assert "`--stream-from-disk` | - | any time |" in reference
    assert r"p(y \| z = expert)" in reference
