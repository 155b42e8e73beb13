"""``l2d predict``: route new images with a run's ``deferral_system`` model and write, per image,
the decision, the classifier's label where it keeps the image, and every option's score.

Images come from a folder (every image file under it, in sorted path order) or from a manifest
(``[{"file": ...}, ...]``, l2d's format). They are decoded once through MLX-Data, as in training,
and scored in chunks; routing then sees all of them at once, so that ``--workload enforce`` bounds
the shares of the whole input.

When the true classes are known (every manifest entry has a ``label``, or every image lies in a
subfolder named as one of the run's classes), the decisions are also scored: coverage, the
classifier's accuracy on the images it keeps and on all, each option's share, and, given the
experts' answers (``--expert-files``), each expert's accuracy on the images it receives and the
system's accuracy.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from l2d.annotations import MISSING
from l2d.data.images import IMAGE_SUFFIXES
from l2d.errors import L2DError
from l2d.evaluation.metrics import safe_ratio
from l2d.serving.trained_system import Routing, TrainedSystem, read_image_files


def image_files_in(folder: Path, classes: list[str]) -> tuple[list[str], np.ndarray | None]:
    """Every image file under ``folder``, in sorted path order, and their classes when every
    image lies in a subfolder named as one of ``classes`` (else None)."""
    if not folder.is_dir():
        raise L2DError(f"--images={folder}: not a folder")
    paths = sorted(path for path in folder.rglob("*")
                   if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not paths:
        raise L2DError(f"--images={folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    tops = [path.relative_to(folder).parts[0] for path in paths]
    labelled = all(len(path.relative_to(folder).parts) > 1 for path in paths) and set(
        tops) <= set(classes)
    labels = np.array([classes.index(top) for top in tops]) if labelled else None
    return [str(path) for path in paths], labels


def read_entries(path: Path) -> list:
    """The entries of a manifest: a non-empty JSON list (each checked by the caller)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise L2DError(f"{path}: manifest file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise L2DError(f"{path}: cannot read manifest: {error}") from None
    except json.JSONDecodeError as error:
        raise L2DError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: "
                       f"{error.msg}") from None
    if not isinstance(entries, list) or not entries:
        raise L2DError(f"{path}: a manifest is a non-empty JSON list of {{\"file\": ...}} objects")
    return entries


def entry_file(path: Path, i: int, entry) -> str:
    """Entry ``i``'s file, resolved as l2d's manifests are: relative to the manifest's folder,
    an absolute path as it is."""
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file:
        raise L2DError(f"{path}: entry {i}: needs a 'file' key with a non-empty path")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), file))


def entry_label(path: Path, i: int, entry) -> int:
    label = entry.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise L2DError(f"{path}: entry {i}: 'label' must be a non-negative integer, got "
                       f"{label!r}")
    return label


def image_files_of_manifest(path: Path) -> tuple[list[str], np.ndarray | None]:
    """The files of a manifest, and their labels when every entry has one (else None)."""
    entries = read_entries(path)
    files = [entry_file(path, i, entry) for i, entry in enumerate(entries)]
    if not all(isinstance(entry, dict) and "label" in entry for entry in entries):
        return files, None
    return files, np.array([entry_label(path, i, entry) for i, entry in enumerate(entries)])


def expert_answers(manifests: list[str], files: list[str], num_experts: int) -> np.ndarray:
    """int ``[N, K]``: each expert's label for each of ``files``, from manifests of the run's
    experts in order (matched by file, as in training; ``MISSING`` where an expert gave none)."""
    if len(manifests) != num_experts:
        raise L2DError(f"--expert-files: gives {len(manifests)} manifests, the run has "
                       f"{num_experts} experts")
    answers = np.full((len(files), num_experts), MISSING)
    row = {file: i for i, file in enumerate(files)}
    for k, manifest in enumerate(map(Path, manifests)):
        for i, entry in enumerate(read_entries(manifest)):
            file = entry_file(manifest, i, entry)
            if entry.get("label") is not None and file in row:
                answers[row[file], k] = entry_label(manifest, i, entry)
    return answers


def route_files(system: TrainedSystem, files: list[str], source: str, *,
                workload: str | None, progress: bool | None) -> Routing:
    """The routing of ``files``; ``source`` names them in errors. ``progress`` None shows a bar
    only on a terminal."""
    images = read_image_files(files, source)
    if images.shape[1:] != system.image_shape:
        # Every image has the first one's shape (read_image_files checks), so it names the input.
        raise L2DError(f"{source}: entry 0 ({files[0]!r}): image of "
                       f"{'x'.join(map(str, images.shape[1:]))}; the run's system takes "
                       f"{'x'.join(map(str, system.image_shape))} (HxWxC)")
    with tqdm(total=len(files), desc="images", unit="img",
              disable=None if progress is None else not progress, file=sys.stderr) as bar:
        scores, classes = system.score(images, on_chunk=bar.update)
    return system.route(scores, classes, workload=workload)


def write_decisions(path: Path, files: list[str], table: dict[str, list],
                    options: list[str]) -> None:
    """``[{"file", "decision", "expert_index", "label", "scores": {option: score}}, ...]``."""
    records = [
        {"file": file, "decision": table["decision"][i],
         "expert_index": table["expert_index"][i], "label": table["label"][i],
         "scores": {name: table[f"score/{name}"][i] for name in options}}
        for i, file in enumerate(files)
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1) + "\n")
    except OSError as error:
        raise L2DError(f"--output={path}: cannot write it ({error.strerror})") from None


def summary(table: dict[str, list], options: list[str]) -> str:
    """How many images went to each option, e.g. ``classifier 12, expert_a 30``."""
    counts = Counter(table["decision"])
    return ", ".join(f"{name} {counts[name]}" for name in options)


def labelled_metrics(routing: Routing, labels: np.ndarray, answers: np.ndarray | None,
                     experts: list[str]) -> dict[str, float]:
    """Scores of the decisions against the true ``labels``; with the experts' ``answers``,
    also each expert's accuracy on what it receives and the system's (NaN: nothing to count,
    or an answer missing for an image deferred to its expert)."""
    num_experts = len(experts)
    kept = routing.chosen == num_experts
    right = routing.class_prediction == labels
    scores = {"images": float(len(labels)), "coverage": safe_ratio(kept.sum(), len(kept)),
              "classifier/accuracy_kept": safe_ratio(right[kept].sum(), kept.sum()),
              "classifier/accuracy_all": safe_ratio(right.sum(), len(right))}
    for k, name in enumerate(experts):
        received = routing.chosen == k
        scores[f"{name}/share"] = safe_ratio(received.sum(), len(received))
        if answers is not None:
            scores[f"{name}/accuracy_received"] = (
                safe_ratio((answers[received, k] == labels[received]).sum(), received.sum())
                if (answers[received, k] >= 0).all() else float("nan"))
    if answers is not None:
        deferred = ~kept
        expert_right = answers[deferred, routing.chosen[deferred]] == labels[deferred]
        scores["accuracy"] = (safe_ratio(right[kept].sum() + expert_right.sum(), len(labels))
                              if (answers[deferred, routing.chosen[deferred]] >= 0).all()
                              else float("nan"))
    return scores


def describe_metrics(scores: dict[str, float], experts: list[str]) -> str:
    """``labelled_metrics`` for a person to read, on one line."""
    system = (f"system accuracy {scores['accuracy']:.3f}, " if "accuracy" in scores else
              "system accuracy: needs the experts' answers (--expert-files); ")
    parts = [f"{system}coverage {scores['coverage']:.3f}, classifier "
             f"{scores['classifier/accuracy_kept']:.3f} on the images it keeps "
             f"({scores['classifier/accuracy_all']:.3f} on all)"]
    for name in experts:
        received = scores.get(f"{name}/accuracy_received")
        parts.append(f"{name} " + (f"{received:.3f} on its {scores[f'{name}/share']:.3f}"
                                   if received is not None else
                                   f"receives {scores[f'{name}/share']:.3f}"))
    return "; ".join(parts)


def write_metrics(decisions: Path, scores: dict[str, float]) -> Path:
    """``<decisions>_metrics.json`` beside the decisions (NaN as null); return its path."""
    path = decisions.with_name(f"{decisions.stem}_metrics.json")
    safe = {k: (v if np.isfinite(v) else None) for k, v in scores.items()}
    try:
        path.write_text(json.dumps(safe, indent=1) + "\n")
    except OSError as error:
        raise L2DError(f"{path}: cannot write it ({error.strerror})") from None
    return path
