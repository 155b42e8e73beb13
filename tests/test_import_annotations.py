"""``l2d prepare annotations``: small tables in each layout of the field's datasets, made here;
the ground truth, split and expert rules against hand counts; one-line errors naming the row."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import in_process_cli, load, make_dataset, raises_one_line
from PIL import Image

from l2d.data.import_annotations import ImportOptions, import_annotations, majority

CLASSES = ["cat", "dog", "owl"]


def images(root: Path, count: int) -> list[str]:
    """``count`` 8x8 PNG files ``root/00000.png``...; their names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / f"{i:05d}.png")
        names.append(f"{i:05d}.png")
    return names


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labels_of(path: Path) -> list:
    return [entry["label"] for entry in load(path)]


def test_a_csv_of_ids_with_a_truth_column_and_a_stratified_split(tmp_path):
    # CIFAR-10H's raw table: annotator, image index, chosen class index, true class index.
    images(tmp_path / "images", 6)
    truth = [0, 1, 2, 0, 1, 2]
    rows = [[a, i, (truth[i] + (a == "w2" and i == 0)) % 3, truth[i], 0]
            for a in ("w1", "w2") for i in range(6)] + [["w1", -99999, 1, 0, 1]]
    table = write_csv(tmp_path / "raw.csv", ["annotator_id", "cifar10_test_test_idx",
                                             "chosen_label", "true_label", "is_attn_check"], rows)
    summary = import_annotations(ImportOptions(
        tmp_path / "out", table, item_column="cifar10_test_test_idx",
        annotator_column="annotator_id", label_column="chosen_label",
        file_pattern="{id:05d}.png", images_root=tmp_path / "images",
        groundtruth_column="true_label", test_fraction=0.5, where=("is_attn_check=0",)))
    assert summary["rows_left_out"] == 1
    out = tmp_path / "out"
    assert summary["images"] == {"train": 3, "test": 3}
    train, test = load(out / "train_groundtruth.json"), load(out / "test_groundtruth.json")
    # One image of each class per split; files relative to the output folder.
    assert sorted(e["label"] for e in train) == sorted(e["label"] for e in test) == [0, 1, 2]
    assert all(e["file"].startswith("../images/") for e in train + test)
    assert load(out / "classes.json") == ["0", "1", "2"]
    w2 = {e["file"]: e["label"] for split in ("train", "test") for e in load(
        out / f"{split}_w2.json")}
    assert w2["../images/00000.png"] == 1  # w2's one wrong answer.
    experts = {e["name"]: e for e in summary["experts"]}
    assert experts["w1"]["agreement"] == 1 and experts["w2"]["agreement"] == pytest.approx(5 / 6)
    assert experts["w1"]["missing"] == 0
    assert load(out / "summary.json") == summary


def test_json_lines_of_class_names_against_ground_truth_manifests_with_their_classes(tmp_path):
    # ImageNet-16H: participant, image name, the class name chosen; ground truth as manifests.
    names = images(tmp_path / "images" / "phase_noise_080", 4)
    for split, files in (("train", names[:3]), ("test", names[3:])):
        (tmp_path / f"{split}_gt.json").write_text(json.dumps(
            [{"file": f"images/phase_noise_080/{name}", "label": int(name[4]) % 3}
             for name in files]))
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    rows = [{"participant_id": 7, "image_name": "00000", "noise_level": 80,
             "participant_classification": "cat"},
            {"participant_id": 7, "image_name": "00003", "noise_level": 80,
             "participant_classification": "owl"},
            {"participant_id": 9, "image_name": "00001", "noise_level": 80,
             "participant_classification": "dog"},
            {"participant_id": 9, "image_name": "00001", "noise_level": 125,
             "participant_classification": "dog"}]
    table = tmp_path / "h.jsonl"
    table.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    summary = import_annotations(ImportOptions(
        tmp_path / "out", table, item_column="image_name", annotator_column="participant_id",
        label_column="participant_classification", images_root=tmp_path / "images",
        file_pattern="phase_noise_{noise_level:03d}/{id}.png", where=("noise_level=80",),
        groundtruth=f"{tmp_path / 'train_gt.json'},{tmp_path / 'test_gt.json'}"))
    out = tmp_path / "out"
    assert load(out / "classes.json") == CLASSES
    # Every image of each manifest, in its order; null where the participant gave no label.
    assert labels_of(out / "train_7.json") == [0, None, None]
    assert labels_of(out / "test_7.json") == [2]
    assert labels_of(out / "train_9.json") == [None, 1, None]
    assert labels_of(out / "test_9.json") == [None]
    assert summary["images_by_number_of_labels"] == {"0": 1, "1": 3}


def test_json_annotation_sets_with_majority_ground_truth(tmp_path):
    # MiceBone: a list of annotation sets, each a list of (image, class name); null: none.
    images(tmp_path, 4)
    labels = {"a": {"00000.png": "dog", "00001.png": "owl", "00002.png": "cat",
                    "00003.png": "dog"},
              "b": {"00000.png": "dog", "00001.png": "cat", "00003.png": "owl", "00002.png": None},
              "c": {"00000.png": "cat", "00001.png": "owl", "00003.png": "cat"}}
    sets = [{"name": name, "user_mail": "INVALID", "annotations": [
        {"image_path": image, "class_label": label, "created_at": "01-01-2020-00-00-00"}
        for image, label in labelled.items()]} for name, labelled in labels.items()]
    table = tmp_path / "annotations.json"
    table.write_text(json.dumps(sets))
    summary = import_annotations(ImportOptions(
        tmp_path / "out", table, item_column="image_path", annotator_column="name",
        label_column="class_label", groundtruth="majority", classes=_classes(tmp_path),
        test_fraction=0.5))
    assert summary["labels_empty"] == 1
    truth = {e["file"]: e["label"] for split in ("train", "test")
             for e in load(tmp_path / "out" / f"{split}_groundtruth.json")}
    # 00003.png: one vote each for dog, owl and cat: the tie goes to cat (0).
    assert truth == {"../00000.png": 1, "../00001.png": 2, "../00002.png": 0, "../00003.png": 0}
    assert summary["images"] == {"train": 3, "test": 1}
    assert "a tie goes to the smallest class index" in summary["groundtruth"]


def _classes(root: Path) -> Path:
    (root / "names.json").write_text(json.dumps(CLASSES))
    return root / "names.json"


def test_labels_written_as_floats_are_class_indices(tmp_path):
    images(tmp_path, 2)
    table = write_csv(tmp_path / "t.csv", ["file", "annotator", "label", "truth", "split"],
                      [["00000.png", "a", "1.0", "1", "train"],
                       ["00001.png", "a", "0.0", "0", "test"]])
    summary = import_annotations(ImportOptions(tmp_path / "out", table,
                                               groundtruth_column="truth", split_column="split"))
    assert summary["classes"] == 2 and summary["experts"][0]["agreement"] == 1


def test_class_names_against_manifests_need_the_class_list(tmp_path):
    names = images(tmp_path, 2)
    for split, name in zip(("train", "test"), names):
        (tmp_path / f"{split}.json").write_text(json.dumps([{"file": name, "label": 0}]))
    table = write_csv(tmp_path / "t.csv", ["file", "annotator", "label"],
                      [[names[0], "a", "cat"], [names[1], "a", "dog"]])
    both = f"{tmp_path / 'train.json'},{tmp_path / 'test.json'}"
    raises_one_line(lambda: import_annotations(ImportOptions(tmp_path / "out", table,
                                                             groundtruth=both)),
                    "t.csv: row 1: class names, but the --groundtruth manifests give indices")
    (tmp_path / "test.json").write_text(json.dumps([{"file": names[0], "label": 0}]))
    raises_one_line(lambda: import_annotations(ImportOptions(
        tmp_path / "out", table, groundtruth=both, classes=_classes(tmp_path))),
        "test.json", "is in", "train.json too")


def test_an_output_folder_of_another_import_is_refused(tmp_path):
    images(tmp_path, 2)
    table = write_csv(tmp_path / "t.csv", ["file", "annotator", "label", "split"],
                      [["00000.png", "a", "cat", "train"], ["00001.png", "b", "dog", "test"]])
    options = ImportOptions(tmp_path / "out", table, groundtruth="majority",
                            split_column="split", classes=_classes(tmp_path))
    import_annotations(options)
    import_annotations(options)  # The same import again writes the same files.
    raises_one_line(lambda: import_annotations(ImportOptions(
        tmp_path / "out", table, groundtruth="majority", split_column="split",
        classes=_classes(tmp_path), top_annotators=1)), "holds test_b.json of another import")


def test_the_majority_tie_rule():
    assert majority([2, 1, 2, 1]) == 1 and majority([0, 2, 2]) == 2 and majority([5]) == 5


def test_vote_counts_sampled_one_annotator_per_image(tmp_path):
    # CIFAR-10H's counts: N x C votes, rows in the order of a manifest.
    data = make_dataset(tmp_path, num_train=6, num_test=3, num_classes=3, num_experts=1)
    order = load(data["train_groundtruth"]) + load(data["test_groundtruth"])
    (tmp_path / "order.json").write_text(json.dumps(order))
    counts = np.array([[3, 0, 0], [0, 2, 1], [1, 1, 1], [0, 0, 4], [2, 2, 0], [0, 1, 0],
                       [1, 0, 0], [0, 3, 0], [0, 0, 0]])
    np.save(tmp_path / "counts.npy", counts)
    options = ImportOptions(
        tmp_path / "out", counts=tmp_path / "counts.npy", order=tmp_path / "order.json",
        groundtruth=f"{data['train_groundtruth']},{data['test_groundtruth']}",
        sample_annotators=2, seed=4)
    import_annotations(options)
    out = tmp_path / "out"
    drawn = list(zip(*(labels_of(out / f"train_pooled_{s}.json")
                       + labels_of(out / f"test_pooled_{s}.json") for s in (1, 2))))
    for (first, second), votes in zip(drawn, counts):
        if votes.sum() == 0:
            assert first is None and second is None
        elif votes.sum() == 1:
            assert votes[first] == 1 and second is None
        else:  # Two labels drawn without replacement from the image's votes.
            pair = np.bincount([first, second], minlength=3)
            assert np.all(pair <= votes)
    # The draw is the seed's: again the same, another seed another (on these 9 images).
    import_annotations(options)
    assert list(zip(labels_of(out / "train_pooled_1.json"), labels_of(
        out / "train_pooled_2.json"))) == drawn[:6]


def test_a_yes_no_finding_per_reader_and_the_most_prolific_readers(tmp_path):
    # NIH ChestX-ray14 readers: Reader ID, Image ID, a finding YES/NO, a split column.
    images(tmp_path, 4)
    rows = ([["r1", f"{i:05d}.png", "YES" if i % 2 else "NO", "val" if i < 3 else "test"]
             for i in range(4)]
            + [["r2", f"{i:05d}.png", "NO", "val" if i < 3 else "test"] for i in range(3)]
            + [["r3", "00000.png", "NO", "val"], ["r3", "00001.png", "HEDGE", "val"]])
    table = write_csv(tmp_path / "individual_readers.csv",
                      ["Reader ID", "Image ID", "Fracture", "Set ID"], rows)
    (tmp_path / "findings.json").write_text(json.dumps(["NO", "YES"]))
    nih = dict(item_column="Image ID", annotator_column="Reader ID", label_column="Fracture",
               classes=tmp_path / "findings.json", groundtruth="majority",
               split_column="Set ID", split_values=("val", "test"), where=("Fracture!=HEDGE",))
    summary = import_annotations(ImportOptions(tmp_path / "out", table, top_annotators=2, **nih))
    assert summary["images"] == {"train": 3, "test": 1}
    assert [e["name"] for e in summary["experts"]] == ["r1", "r2"]
    assert labels_of(tmp_path / "out" / "test_r2.json") == [None]
    assert not (tmp_path / "out" / "train_r3.json").exists()
    summary = import_annotations(ImportOptions(tmp_path / "out2", table, min_annotations=3,
                                               **nih))
    assert [e["name"] for e in summary["experts"]] == ["r1", "r2"]
    raises_one_line(lambda: import_annotations(ImportOptions(
        tmp_path / "out3", table, **{**nih, "where": ()})), "row 9", "unknown class 'HEDGE'")


def test_a_wide_table_with_one_label_column_per_pathologist(tmp_path):
    # Chaoyang's train_label.json: name, label and one label per pathologist.
    images(tmp_path / "train", 4)
    entries = [{"name": f"train/{i:05d}.png", "label": i % 2, "label_A": i % 2,
                "label_B": 1, "label_C": i % 2} for i in range(4)]
    table = tmp_path / "train_label.json"
    table.write_text(json.dumps(entries))
    summary = import_annotations(ImportOptions(
        tmp_path / "out", table, item_column="name",
        label_columns=("label_A", "label_B", "label_C"), groundtruth_column="label",
        test_fraction=0.5))
    experts = {e["name"]: e for e in summary["experts"]}
    assert list(experts) == ["label_A", "label_B", "label_C"]
    assert experts["label_A"]["agreement"] == 1 and experts["label_B"]["agreement"] == 0.5
    assert summary["images"] == {"train": 2, "test": 2}


def bad_table(tmp_path, rows, **options):
    images(tmp_path, 2)
    table = write_csv(tmp_path / "t.csv", ["file", "annotator", "label", "split"], rows)
    defaults = dict(groundtruth="majority", split_column="split", classes=_classes(tmp_path))
    return lambda: import_annotations(ImportOptions(tmp_path / "out", table,
                                                    **{**defaults, **options}))


@pytest.mark.parametrize("rows, options, fragments", [
    ([["00000.png", "a", "cat", "train"], ["00009.png", "a", "dog", "test"]], {},
     ["t.csv: row 2", "unknown item", "00009.png"]),
    ([["00000.png", "a", "cat", "train"], ["00001.png", "a", "emu", "test"]], {},
     ["t.csv: row 2", "unknown class 'emu'"]),
    ([["00000.png", "a", "cat", "train"], ["00000.png", "a", "dog", "train"]], {},
     ["t.csv: row 2", "annotator 'a' labels '00000.png' twice", "row 1"]),
    ([["00000.png", "a", "cat", "train"], ["00001.png", "b", "dog", "test"]],
     {"min_annotations": 2}, ["no annotator has at least --min-annotations=2"]),
    ([["00000.png", "a", "cat", "train"], ["00001.png", "a", "dog", "val"]], {},
     ["t.csv: row 2", "split 'val'"]),
    ([["00000.png", "a", "cat", "train"], ["00000.png", "b", "cat", "test"]], {},
     ["t.csv: row 2", "column 'split' gives 'test'", "row 1 gave 'train'"]),
    ([["00000.png", "a", "cat", "train"], ["", "a", "dog", "test"]], {},
     ["t.csv: row 2", "no value in column 'file'"]),
    ([["00000.png", "a", "cat", "train"]], {"label_column": "class"},
     ["t.csv: no column 'class' (columns: file, annotator, label, split)"]),
    ([["00000.png", "a", "cat", "train"], ["00001.png", "b", "dog", "test"]],
     {"sample_annotators": 2}, ["--sample-annotators=2: no image has more than 1 labels"]),
    ([["00000.png", "a", "cat", "train"]], {"sample_annotators": 1, "min_annotations": 2},
     ["--min-annotations: not with --sample-annotators"]),
    ([["00000.png", "a", "cat", "train"]], {"test_fraction": 0.5},
     ["--test-fraction: not with --split-column"]),
    ([["00000.png", "groundtruth", "cat", "train"], ["00001.png", "groundtruth", "dog", "test"]],
     {}, ["annotator 'groundtruth' would write train_groundtruth.json"]),
    ([["00000.png", "a", "0", "train"], ["00001.png", "a", "3.0", "test"]], {"classes": None},
     ["class indices 1, 2 appear in no label (the largest is 3); give --classes"]),
    ([["00000.png", "a", "cat", "train"]], {"where": ("kind=x",)},
     ["--where=kind=x", "no column 'kind'"]),
    ([["00000.png", "a", "cat", "train"]], {"where": ("annotator=b",)},
     ["no annotation is left after --where"]),
    ([["00000.png", "a", "cat", "train"]], {}, ["the test split has no image"]),
])
def test_bad_input_is_one_line_naming_the_row_and_writes_nothing(tmp_path, rows, options,
                                                                  fragments):
    raises_one_line(bad_table(tmp_path, rows, **options), *fragments)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_cli_imports_a_table_and_trains_on_its_folder(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path, num_train=12, num_test=6, num_classes=3, num_experts=1)
    rows = []
    for split in ("train", "test"):
        for i, entry in enumerate(load(data[f"{split}_groundtruth"])):
            for annotator in ("ann1", "ann2", "ann3"):
                if (i + len(annotator) + int(annotator[-1])) % 3:  # Two of three label each.
                    rows.append([entry["file"], annotator, entry["label"]])
    write_csv(tmp_path / "table.csv", ["file", "annotator", "label"], rows)
    monkeypatch.chdir(tmp_path)
    code, err = in_process_cli(monkeypatch, capsys, "prepare", "annotations", "table.csv",
                               "--output", "crowd", "--groundtruth",
                               f"{data['train_groundtruth']},{data['test_groundtruth']}")
    assert code == 0, err
    summary = load(tmp_path / "crowd" / "summary.json")
    assert len(summary["experts"]) == 3 and summary["images"] == {"train": 12, "test": 6}
    code, err = in_process_cli(
        monkeypatch, capsys, "train", "--train-files", "crowd", "--test-files", "crowd/test_*",
        "--train-groundtruth-file", "crowd/train_groundtruth.json",
        "--test-groundtruth-file", "crowd/test_groundtruth.json", "--method", "ova",
        "--model", "cnn", "--width", "4", "--num-epochs", "1", "--batch-size", "6",
        "--allow-missing-annotations", "--no-tqdm")
    assert code == 0, err
    config = json.loads(next(Path("artifacts").glob("*/config.json")).read_text())
    assert [Path(f).name for f in config["train_files"]] == [
        "train_ann1.json", "train_ann2.json", "train_ann3.json"]
    assert [Path(f).name for f in config["test_files"]] == [
        "test_ann1.json", "test_ann2.json", "test_ann3.json"]
    code, err = in_process_cli(monkeypatch, capsys, "prepare", "annotations", "table.csv",
                               "--output", "again", "--groundtruth", "majority")
    assert code == 2 and err.count("\n") == 1 and "no split" in err
