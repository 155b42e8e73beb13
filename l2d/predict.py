"""``l2d predict``: route new images with a run's ``deferral_system`` model and write, per image,
the decision, the classifier's label where it keeps the image, and every option's score.

Images come from a folder (every image file under it, in sorted path order) or from a manifest
(``[{"file": ...}, ...]``, l2d's format; a ``label`` is allowed and ignored). They are decoded
once through MLX-Data, as in training, and scored in chunks; routing then sees all of them at
once, so that ``--workload enforce`` bounds the shares of the whole input.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from l2d.errors import L2DError
from l2d.trained_system import TrainedSystem, read_image_files

# What MLX-Data's decoder (stb_image) reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".pnm", ".ppm", ".pgm")


def image_files_in(folder: Path) -> list[str]:
    """Every image file under ``folder``, in sorted path order."""
    if not folder.is_dir():
        raise L2DError(f"--images={folder}: not a folder")
    files = sorted(str(path) for path in folder.rglob("*")
                   if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not files:
        raise L2DError(f"--images={folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_files_of_manifest(path: Path) -> list[str]:
    """The files of a manifest, relative paths resolved against its folder."""
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
    files = []
    for i, entry in enumerate(entries):
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or not file:
            raise L2DError(f"{path}: entry {i}: needs a 'file' key with a non-empty path")
        # As l2d's manifests: relative to the manifest's folder, an absolute path as it is.
        files.append(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                                   file)))
    return files


def route_files(system: TrainedSystem, files: list[str], source: str, *,
                workload: str | None, progress: bool | None) -> dict[str, list]:
    """The decision table (``TrainedSystem.rows``) of ``files``; ``source`` names them in
    errors. ``progress`` None shows a bar only on a terminal."""
    images = read_image_files(files, source)
    if images.shape[1:] != system.image_shape:
        # Every image has the first one's shape (read_image_files checks), so it names the input.
        raise L2DError(f"{source}: entry 0 ({files[0]!r}): image of "
                       f"{'x'.join(map(str, images.shape[1:]))}; the run's system takes "
                       f"{'x'.join(map(str, system.image_shape))} (HxWxC)")
    with tqdm(total=len(files), desc="images", unit="img",
              disable=None if progress is None else not progress, file=sys.stderr) as bar:
        scores, classes = system.score(images, on_chunk=bar.update)
    return system.rows(system.route(scores, classes, workload=workload))


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
