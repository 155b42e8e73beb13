"""The data and plotting tools through the real CLI: prepare -> experts -> (train) -> plot."""

import numpy as np
from conftest import load
from PIL import Image

from l2d.cli import main


def image_folder(root, counts: dict[str, int]):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_prepare_then_experts(tmp_path, capsys):
    source = image_folder(tmp_path / "photos", {"cat": 10, "dog": 10, "owl": 10})
    out = tmp_path / "data"
    assert main(["prepare", str(source), "--output", str(out), "--train-per-class", "5",
                 "--seed", "1"]) == 0
    assert "stratified split: 15 training and 6 test images" in capsys.readouterr().out
    train = load(out / "train_groundtruth.json")
    assert np.bincount([e["label"] for e in train]).tolist() == [5, 5, 5]
    assert load(out / "classes.json") == ["cat", "dog", "owl"]

    truths = f"{out / 'train_groundtruth.json'},{out / 'test_groundtruth.json'}"
    assert main(["experts", "--groundtruth", truths, "--noise", "0.5", "--seed", "44"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{out / 'train_random_noise_0.5_44.json'}: accuracy ")
    noisy = load(out / "train_random_noise_0.5_44.json")
    assert [e["file"] for e in noisy] == [e["file"] for e in train]

    assert main(["experts", "--groundtruth", truths, "--specialist", "0-1", "--seed", "3"]) == 0
    assert "accuracy in 1.0000" in capsys.readouterr().out
    assert (out / "test_specialist_0-1_1.0_0.1_3.json").is_file()


def test_tool_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert "empty" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()
    source = image_folder(tmp_path / "photos", {"a": 3, "b": 3})
    assert main(["prepare", str(source), "--output", str(tmp_path / "o"),
                 "--train-per-class", "0"]) == 2
    assert "--train-per-class=0" in one_line_error(capsys)
    assert main(["prepare", str(source), "--output", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    truth = str(tmp_path / "o" / "train_groundtruth.json")
    assert main(["experts", "--groundtruth", truth, "--noise", "1.5"]) == 2
    assert "1.5" in one_line_error(capsys)
    assert main(["experts", "--groundtruth", truth, "--specialist", "0-7"]) == 2
    assert "7" in one_line_error(capsys)
    assert main(["plot", "--run-id", "0" * 32, "--tracking-uri",
                 f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    one_line_error(capsys)


def test_plot_command_writes_pngs_of_a_logged_run(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    from l2d.evaluation.accuracy_coverage import CURVE_FILE
    from l2d.evaluation.plot import method_plots

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e"))
    client.log_param(run.info.run_id, "method", "em")
    for epoch in (1, 2):
        for plot in method_plots("em"):
            client.log_metric(run.info.run_id, plot.metric, 0.5 / epoch, step=epoch)
    client.log_dict(run.info.run_id, {"epoch": 2, "coverage": [0.0, 0.25, 1.0],
                                      "accuracy": [0.4, 0.25, 0.2], "auc": 0.3},
                    CURVE_FILE)
    assert main(["plot", "--run-id", run.info.run_id, "--output", "figures"]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == len(method_plots("em")) + 1
    for path in written:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # By default the PNGs go to --output only; --log-to-runs also logs them to the run.
    assert not client.list_artifacts(run.info.run_id, "plots")
    assert main(["plot", "--run-id", run.info.run_id, "--output", "figures",
                 "--log-to-runs"]) == 0
    capsys.readouterr()
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert logged == {f"plots/{p.rsplit('/', 1)[-1]}" for p in written}
