"""User errors through the real command line: one line on stderr, exit code 2, no traceback, and
no MLflow run left RUNNING.

Most cases call ``l2d.cli.main`` in-process from inside ``tmp_path`` (so the default store
``./mlflow.db`` and ``./artifacts`` land there); a few also run ``python -m l2d`` in a subprocess.
Every case must fail before any training step (one, a resume without checkpoint, only once
the run is reopened and the networks are built).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROXY_VARIABLES, cli_env, dump, free_port, load
from PIL import Image

from l2d.cli import main
from l2d.tracking import QUIET_ENVIRONMENT

# Tiny settings, in case a case wrongly gets as far as training.
TINY = ["--batch-size", "4", "--num-epochs", "1", "--clf-width", "4", "--dfr-width", "2",
        "--no-tqdm"]
RUN_ID = "0123456789abcdef0123456789abcdef"  # well-formed, but in no store


# ---------------------------------------------------------------- helpers


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from ``tmp_path`` on the CPU, without proxies (the unreachable server is local).

    ``python -m l2d`` imports mlflow only after quieting it (``QUIET_ENVIRONMENT``, read by mlflow
    at import); in this process another test module may have imported mlflow first, at its default
    INFO level, so its logger is set to what the CLI would get. The real process is checked by
    ``test_subprocess_user_error``.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield tmp_path
    logger.setLevel(level)


def train_argv(d: dict, *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
    """``train`` with the four manifest flags of dataset ``d`` (minus ``drop``), TINY and extra."""
    flags = {
        "--train-files": ",".join(d["train_experts"]),
        "--train-groundtruth-file": d["train_groundtruth"],
        "--test-files": ",".join(d["test_experts"]),
        "--test-groundtruth-file": d["test_groundtruth"],
    }
    argv = ["train"]
    for flag, value in flags.items():
        if flag not in drop:
            argv += [flag, value]
    return argv + TINY + list(extra)


def run_main(argv: list[str], capfd) -> tuple[int, str]:
    """``l2d.cli.main(argv)``: (exit code, stderr). argparse errors leave by SystemExit."""
    capfd.readouterr()  # drop anything printed while the test set up its files
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capfd.readouterr().err


def assert_user_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line, without traceback, holding every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert code == 2, (code, stderr)
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def mlflow_client(folder: Path):
    """A client of ``folder/mlflow.db``, with mlflow imported as quietly as the CLI imports it."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def mlflow_runs(folder: Path) -> list:
    """Every run (of every experiment, active or deleted) in ``folder/mlflow.db``, if it exists."""
    if not (folder / "mlflow.db").exists():
        return []
    from mlflow.entities import ViewType

    client = mlflow_client(folder)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(ids, run_view_type=ViewType.ALL)) if ids else []


def assert_no_running_run(folder: Path, *, any_run: bool = False) -> list:
    """No run of ``folder/mlflow.db`` is RUNNING; unless ``any_run``, no run exists at all (every
    check of user input precedes the creation of the run). Returns the runs."""
    runs = mlflow_runs(folder)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    if not any_run:
        assert not runs, f"a user error left runs: {[(r.info.run_id, r.info.status) for r in runs]}"
    return runs


def image_path(d: dict, split: str, entry: int) -> str:
    manifest = d[f"{split}_groundtruth"]
    return os.path.join(os.path.dirname(manifest), load(manifest)[entry]["file"])


def run_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- manifest and data cases
#
# Each breaks the tiny dataset ``d`` and returns (extra argv, fragments of the error line).


def invalid_json(d):
    dump(d["train_groundtruth"], '[{"file": "images/train_0000.png", "label": 0}')
    return [], [d["train_groundtruth"], "invalid JSON"]


def not_a_list(d):
    dump(d["train_groundtruth"], {"file": "images/train_0000.png", "label": 0})
    return [], [d["train_groundtruth"], "JSON list"]


def entry_not_an_object(d):
    entries = load(d["train_experts"][0])
    entries[1] = 5
    dump(d["train_experts"][0], entries)
    return [], [d["train_experts"][0], "entry 1", "object"]


def missing_label(d):
    entries = load(d["test_groundtruth"])
    del entries[2]["label"]
    dump(d["test_groundtruth"], entries)
    return [], [d["test_groundtruth"], "entry 2", "'label'"]


def non_integer_label(d):
    entries = load(d["train_groundtruth"])
    entries[3]["label"] = 1.5
    dump(d["train_groundtruth"], entries)
    return [], [d["train_groundtruth"], "entry 3", entries[3]["file"], "integer"]


def label_above_num_classes_flag(d):
    # The fixture's labels go up to 2: --num-classes 2 is too small.
    entries = load(d["train_groundtruth"])
    row = [e["label"] for e in entries].index(2)
    return ["--num-classes", "2"], [d["train_groundtruth"], f"entry {row}", "label 2",
                                    "num_classes"]


def label_out_of_range_in_test_split(d):
    entries = load(d["test_groundtruth"])
    entries[4]["label"] = 7
    dump(d["test_groundtruth"], entries)
    return [], [d["test_groundtruth"], "entry 4", "label 7", "outside"]


def expert_label_out_of_range(d):
    entries = load(d["train_experts"][1])
    entries[6]["label"] = 9
    dump(d["train_experts"][1], entries)
    return [], [d["train_experts"][1], "entry 6", "label 9", "outside"]


def duplicate_file(d):
    entries = load(d["train_groundtruth"])
    entries.append(dict(entries[0]))
    dump(d["train_groundtruth"], entries)
    return [], [d["train_groundtruth"], f"entry {len(entries) - 1}", "duplicate"]


def missing_manifest(d):
    os.remove(d["test_experts"][1])
    return [], [d["test_experts"][1], "not found"]


def missing_image_file(d):
    os.remove(image_path(d, "train", 7))
    return [], [d["train_groundtruth"], "entry 7", "not found"]


def undecodable_image(d):
    with open(image_path(d, "test", 5), "wb") as f:
        f.write(b"not a png")
    return [], [d["test_groundtruth"], "entry 5", "test_0005.png", "decoded"]


def truncated_jpeg(d):
    """libjpeg prints its own warning each time the file is read: none of it may show."""
    manifest = load(d["test_groundtruth"])
    jpeg = image_path(d, "test", 5).removesuffix(".png") + ".jpg"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(jpeg)
    with open(jpeg, "r+b") as f:
        f.truncate(os.path.getsize(jpeg) // 2)
    manifest[5]["file"] = manifest[5]["file"].removesuffix(".png") + ".jpg"
    dump(d["test_groundtruth"], manifest)
    for expert in d["test_experts"]:
        entries = load(expert)
        entries[5]["file"] = manifest[5]["file"]
        dump(expert, entries)
    return [], [d["test_groundtruth"], "entry 5", "test_0005.jpg", "decoded"]


def mixed_image_shapes(d):
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(image_path(d, "train", 11))
    return [], [d["train_groundtruth"], "entry 11", "train_0011.png", "(9, 8, 3)", "(8, 8, 3)"]


def expert_missing_a_file(d):
    entries = load(d["train_experts"][1])
    dropped = entries.pop(4)["file"]
    dump(d["train_experts"][1], entries)
    return [], [d["train_experts"][1], os.path.basename(dropped), "has no entry", "entry 4"]


def expert_with_an_extra_file(d):
    entries = load(d["test_experts"][0])
    entries.append({"file": "images/train_0000.png", "label": 0})
    dump(d["test_experts"][0], entries)
    return [], [d["test_experts"][0], f"entry {len(entries) - 1}", "not in the ground-truth"]


def different_numbers_of_experts(d):
    d["test_experts"] = d["test_experts"][:1]
    return [], ["--test-files", "1 experts", "--train-files gives 2"]


def train_and_test_shapes_differ(d):
    for row in range(len(load(d["test_groundtruth"]))):
        Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(image_path(d, "test", row))
    return [], [d["test_groundtruth"], "(9, 9, 3)", d["train_groundtruth"], "(8, 8, 3)"]


DATA_CASES = [
    invalid_json, not_a_list, entry_not_an_object, missing_label, non_integer_label,
    label_above_num_classes_flag, label_out_of_range_in_test_split, expert_label_out_of_range,
    duplicate_file, missing_manifest, missing_image_file, undecodable_image, truncated_jpeg,
    mixed_image_shapes,
    expert_missing_a_file, expert_with_an_extra_file, different_numbers_of_experts,
    train_and_test_shapes_differ,
]


@pytest.mark.parametrize("breaks", DATA_CASES, ids=lambda f: f.__name__)
def test_bad_data(in_tmp, tiny_dataset, capfd, breaks):
    extra, fragments = breaks(tiny_dataset)
    code, stderr = run_main(train_argv(tiny_dataset, *extra), capfd)
    assert_user_error(code, stderr, *fragments)
    assert_no_running_run(in_tmp)


# ---------------------------------------------------------------- flags, store, artifact folder


def test_missing_required_flag(in_tmp, tiny_dataset, capfd):
    argv = train_argv(tiny_dataset, drop=("--train-groundtruth-file",))
    assert_user_error(*run_main(argv, capfd), "--train-groundtruth-file", "required")
    assert_no_running_run(in_tmp)


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--clf-model", "vgg"], ["--clf-model", "invalid choice", "vgg"]),
        (["--dfr-model", "resnet50"], ["--dfr-model", "invalid choice", "resnet50"]),
        (["--batch-size", "four"], ["--batch-size", "invalid int value"]),
        (["--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
        (["--resume"], ["--resume needs --run-id"]),
        (["--test"], ["--test needs --run-id"]),
        (["--run-id", RUN_ID], [f"--run-id={RUN_ID}", "only used with --resume or --test"]),
        (["--resume", "--test", "--run-id", RUN_ID], ["--resume and --test"]),
        (["--batch-size", "0"], ["--batch-size=0", "at least 1"]),
        (["--seed", "-1"], ["--seed=-1", "non-negative"]),
        (["--experiment-name", " "], ["--experiment-name", "must not be empty"]),
        (["--method", "mixture"], ["--method", "invalid choice", "mixture"]),
        (["--method", "softmax"], ["--clf-width", "only used by --method em",
                                   "not by --method softmax"]),
        (["--width", "4"], ["--width", "only used by --method softmax, ova, rs or asm",
                            "not by --method em"]),
        (["--rs-alpha", "0.5"], ["--rs-alpha", "only used by --method rs", "not by --method em"]),
        (["--method", "selective"], ["--dfr-width", "only used by --method em",
                                     "not by --method selective"]),
        (["--model", "vgg"], ["--model", "invalid choice", "vgg"]),
        (["--width", "0", "--method", "ova"], ["--width=0", "at least 1"]),
        (["--expert-names", "a"], ["--expert-names=a", "gives 1 names for 2 experts"]),
        (["--expert-names", "a,a"], ["--expert-names=a,a", "its own non-empty name"]),
        (["--expert-names", "a,classifier"], ["'classifier' names the classifier's option"]),
        (["--run-name", " "], ["--run-name", "must not be empty"]),
    ],
    ids=["unknown-clf-model", "unknown-dfr-model", "bad-int", "unknown-flag", "resume-no-run-id",
         "test-no-run-id", "run-id-alone", "resume-and-test", "zero-batch-size", "negative-seed",
         "empty-experiment-name", "unknown-method", "em-flag-for-softmax", "softmax-flag-for-em",
         "rs-flag-for-em", "em-flag-for-selective",
         "unknown-model", "zero-width", "expert-names-count", "expert-names-twice",
         "expert-named-classifier", "empty-run-name"],
)
def test_bad_flags(in_tmp, tiny_dataset, capfd, extra, fragments):
    assert_user_error(*run_main(train_argv(tiny_dataset, *extra), capfd), *fragments)
    assert_no_running_run(in_tmp)


def test_no_command(in_tmp, capfd):
    assert_user_error(*run_main([], capfd), "required")


@pytest.mark.parametrize("mode", ["--resume", "--test"])
def test_unknown_run_id_without_saved_config(in_tmp, tiny_dataset, capfd, mode):
    argv = ["train", mode, "--run-id", RUN_ID, "--no-tqdm"]
    assert_user_error(*run_main(argv, capfd), f"--run-id={RUN_ID}", "config.json",
                      "--artifact-path")
    assert_no_running_run(in_tmp)


def save_run_config(folder: Path, d: dict, run_id: str, **changes) -> None:
    """``folder/artifacts/<run_id>/config.json`` for dataset ``d``, as a training run saves it."""
    from l2d.config import TrainConfig

    config = TrainConfig.from_dict(dict(
        train_files=tuple(d["train_experts"]), train_groundtruth_file=d["train_groundtruth"],
        test_files=tuple(d["test_experts"]), test_groundtruth_file=d["test_groundtruth"],
        num_classes=3, norm_mean=(0.5, 0.5, 0.5), norm_std=(0.25, 0.25, 0.25), batch_size=4,
        num_epochs=1, clf_width=4, dfr_width=2, tqdm=False, **changes))
    (folder / "artifacts" / run_id).mkdir(parents=True)
    config.save(folder / "artifacts" / run_id / "config.json")


@pytest.mark.parametrize("mode", ["--resume", "--test"])
def test_unknown_run_id_with_saved_config(in_tmp, tiny_dataset, capfd, mode):
    """A config.json under ./artifacts/<id> (e.g. copied from elsewhere), but no such run in the
    store: this one gets as far as opening the store, then must stop without creating a run."""
    save_run_config(in_tmp, tiny_dataset, RUN_ID)
    argv = ["train", mode, "--run-id", RUN_ID, "--no-tqdm"]
    assert_user_error(*run_main(argv, capfd), f"--run-id={RUN_ID}", "no such run")
    assert_no_running_run(in_tmp)


def test_resume_with_a_changed_flag(in_tmp, tiny_dataset, capfd):
    save_run_config(in_tmp, tiny_dataset, RUN_ID)
    argv = ["train", "--resume", "--run-id", RUN_ID, "--lr", "0.5"]
    assert_user_error(*run_main(argv, capfd), "--lr=0.5", RUN_ID, "trained with 0.01")
    # More epochs than the run was started with: refused, saying why.
    argv = ["train", "--resume", "--run-id", RUN_ID, "--num-epochs", "9"]
    assert_user_error(*run_main(argv, capfd), "--num-epochs=9", "trained with 1",
                      "the learning rate decays over the epochs the run was started with, so a "
                      "longer training is a new run")
    assert_no_running_run(in_tmp)


def test_resume_of_a_finished_run(in_tmp, tiny_dataset, capfd):
    """A finished run resumed would log its evaluation and its model a second time."""
    client = mlflow_client(in_tmp)
    run_id = client.create_run(client.create_experiment("l2d")).info.run_id
    client.set_terminated(run_id, "FINISHED")
    save_run_config(in_tmp, tiny_dataset, run_id, dfr_model="cnn")
    argv = ["train", "--resume", "--run-id", run_id, "--no-tqdm"]
    assert_user_error(*run_main(argv, capfd), f"--run-id={run_id}: the run is FINISHED, there "
                      f"is nothing to resume; `--test --run-id {run_id}` evaluates it again")
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("mode", ["--resume", "--test"])
def test_another_method_than_the_runs(in_tmp, tiny_dataset, capfd, mode):
    save_run_config(in_tmp, tiny_dataset, RUN_ID)
    argv = ["train", mode, "--run-id", RUN_ID, "--method", "ova"]
    assert_user_error(*run_main(argv, capfd), "--method=ova", RUN_ID, "trained with em")
    assert_no_running_run(in_tmp)


def test_resume_without_checkpoint_leaves_no_running_run(in_tmp, tiny_dataset, capfd):
    """The one user error found only once the run is (re)opened: a run killed before its first
    checkpoint. The run must not stay RUNNING. (Both networks are tiny cnns: building the
    default preact_resnet10 takes ~20 s of XLA compilation on CPU.)"""
    client = mlflow_client(in_tmp)
    run_id = client.create_run(client.create_experiment("l2d")).info.run_id
    client.set_terminated(run_id, "KILLED")
    save_run_config(in_tmp, tiny_dataset, run_id, dfr_model="cnn")
    argv = ["train", "--resume", "--run-id", run_id, "--no-tqdm"]
    assert_user_error(*run_main(argv, capfd), "checkpoints", "no checkpoint to resume from")
    runs = assert_no_running_run(in_tmp, any_run=True)
    assert [r.info.run_id for r in runs] == [run_id]


def test_unreachable_tracking_server(in_tmp, tiny_dataset, capfd):
    uri = f"http://127.0.0.1:{free_port()}"
    argv = train_argv(tiny_dataset, "--tracking-uri", uri)
    assert_user_error(*run_main(argv, capfd), f"--tracking-uri={uri}", "not reachable")
    assert_no_running_run(in_tmp)


@pytest.mark.parametrize("uri", ["127.0.0.1:5000", "postgresql://user:pw@127.0.0.1:9/mlflow"],
                         ids=["no-scheme", "unreachable-database"])
def test_unusable_tracking_uri(in_tmp, tiny_dataset, capfd, uri):
    argv = train_argv(tiny_dataset, "--tracking-uri", uri)
    assert_user_error(*run_main(argv, capfd), f"--tracking-uri={uri}")
    assert_no_running_run(in_tmp)


def test_unwritable_sqlite_store(in_tmp, tiny_dataset, capfd):
    (in_tmp / "afile").write_text("a regular file: nothing can be created under it\n")
    uri = f"sqlite:///{in_tmp / 'afile' / 'sub' / 'mlflow.db'}"
    argv = train_argv(tiny_dataset, "--tracking-uri", uri)
    assert_user_error(*run_main(argv, capfd), f"--tracking-uri={uri}", "not writable")
    assert_no_running_run(in_tmp)


def test_unwritable_artifact_path(in_tmp, tiny_dataset, capfd):
    # chmod does not stop root; a path under a regular file cannot be created by anyone.
    (in_tmp / "afile").write_text("a regular file: nothing can be created under it\n")
    path = str(in_tmp / "afile" / "sub")
    argv = train_argv(tiny_dataset, "--artifact-path", path)
    assert_user_error(*run_main(argv, capfd), f"--artifact-path={path}", "not writable")
    assert not (in_tmp / "artifacts").exists()
    assert_no_running_run(in_tmp)


# ---------------------------------------------------------------- the real process


@pytest.mark.parametrize(
    "case", ["invalid-json", "unreachable-server", "missing-flag", "unknown-run-id"])
def test_subprocess_user_error(tmp_path, tiny_dataset, case):
    """``python -m l2d train`` itself: one stderr line, exit code 2, no traceback. The unknown run
    is the case that opens the MLflow store (and creates ./mlflow.db) before failing."""
    d = tiny_dataset
    argv = ["-m", "l2d"]
    if case == "invalid-json":
        dump(d["test_experts"][0], "{not json")
        argv += train_argv(d)
        fragments = [d["test_experts"][0], "invalid JSON"]
    elif case == "unreachable-server":
        uri = f"http://127.0.0.1:{free_port()}"
        argv += train_argv(d, "--tracking-uri", uri)
        fragments = [f"--tracking-uri={uri}", "not reachable"]
    elif case == "missing-flag":
        argv += train_argv(d, drop=("--test-files",))
        fragments = ["--test-files", "expert manifest"]
    else:
        save_run_config(tmp_path, d, RUN_ID)
        argv += ["train", "--resume", "--run-id", RUN_ID]
        fragments = [f"--run-id={RUN_ID}", "no such run"]
    result = run_subprocess(argv, cwd=tmp_path)
    assert_user_error(result.returncode, result.stderr, *fragments)
    assert (tmp_path / "mlflow.db").exists() == (case == "unknown-run-id")
    assert_no_running_run(tmp_path)


def test_help_is_quick_and_light(tmp_path):
    result = run_subprocess(["-m", "l2d", "train", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--train-groundtruth-file" in result.stdout and "--tracking-uri" in result.stdout
    # Neither importing the CLI, nor --help, nor a flag error imports jax or mlflow.
    script = "\n".join([
        "import sys",
        "import l2d.cli",
        "assert 'jax' not in sys.modules and 'mlflow' not in sys.modules, 'import l2d.cli'",
        "try:",
        "    l2d.cli.main(['train', '--help'])",
        "except SystemExit as e:",
        "    assert e.code == 0, e.code",
        "assert l2d.cli.main(['train', '--train-files', 'a.json']) == 2",
        "heavy = sorted({'jax', 'mlflow', 'flax'} & set(sys.modules))",
        "assert not heavy, heavy",
    ])
    result = run_subprocess(["-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_deleted_experiment(in_tmp, tiny_dataset, capfd):
    client = mlflow_client(in_tmp)
    client.delete_experiment(client.create_experiment("gone"))
    argv = train_argv(tiny_dataset, "--experiment-name", "gone")
    assert_user_error(*run_main(argv, capfd), "--experiment-name=gone", "deleted")
    assert_no_running_run(in_tmp)


def test_unusable_compilation_cache_dir(in_tmp, tiny_dataset, capfd):
    (in_tmp / "afile").write_text("a regular file: nothing can be created under it\n")
    argv = train_argv(tiny_dataset, "--compilation-cache-dir", str(in_tmp / "afile" / "cache"))
    assert_user_error(*run_main(argv, capfd), "--compilation-cache-dir", "cannot create it")
    assert_no_running_run(in_tmp)
