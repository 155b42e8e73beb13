"""Decoding the images of a split through MLX-Data: validation, channel statistics, optional cache.

``decode_all`` decodes every image of a split exactly once, in manifest order, on several threads.
It checks that all images share one shape (MLX-Data's ``batch`` would silently pad mixed shapes),
names the file behind a decode failure (MLX-Data only says ``load_stbi: could not load <path>``),
and computes per-channel mean and std of the pixels scaled to [0, 1]. With ``keep=True`` it also
keeps the uint8 pixels in one contiguous array, so that training never decodes again; with
``keep=False`` the pipeline decodes from disk each epoch instead.

One rule for every format: an image has the channels its file stores, so a grayscale image is
one channel. MLX-Data decodes PNGs that way but expands a grayscale JPEG to three equal channels;
``stored_channels`` takes them back to one, for the JPEGs whose header says grayscale.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from l2d.data.manifest import SplitRecords
from l2d.errors import L2DError

# Images decoded per MLX-Data batch while scanning a split; only bounds memory and Python overhead.
_SCAN_CHUNK = 256
# Largest share of the available memory that decoded pixels may take.
MEMORY_SHARE = 0.5
_LOAD_ERROR = re.compile(r"could not load <(.*)>")


@dataclass(frozen=True, eq=False)
class DecodedImages:
    """What decoding a split found: the common image shape, channel statistics and maybe pixels."""

    shape: tuple[int, int, int]  # (H, W, C) shared by every image of the split
    channel_mean: np.ndarray  # float32 [C]: mean of pixel / 255 over all pixels of the split
    channel_std: np.ndarray  # float32 [C]: population std (ddof=0) of pixel / 255
    pixels: np.ndarray | None  # uint8 [N, H, W, C] in manifest order if kept, else None
    grayscale_jpeg: np.ndarray  # bool [N]: the file is a grayscale JPEG (see stored_channels)


def image_buffer(files, indices: np.ndarray):
    """An MLX-Data buffer of samples ``{"file", "index", "image"}`` for ``files[i]``, i in indices.

    ``image`` is decoded lazily (uint8 HxWxC) when a sample is read; ``index`` is the row in the
    split, so labels are gathered on the NumPy side and never travel through MLX-Data.
    """
    import mlx.data as dx  # imported here: importing l2d.data must stay cheap

    samples = [
        {"file": os.fsencode(files[i]), "index": np.array(i, dtype=np.int64)}
        for i in indices.tolist()
    ]
    return dx.buffer_from_vector(samples).load_image("file", output_key="image")


def raise_decode_error(split: SplitRecords, error: RuntimeError, candidates=None) -> None:
    """Turn MLX-Data's vague decode RuntimeError into an L2DError naming file and manifest entry.

    ``candidates`` (rows of the split, in order) are tried one by one to find the first file that
    does not decode; without them, the path quoted in MLX-Data's message is used.
    """
    if candidates is not None and len(candidates):
        buffer = image_buffer(split.files, np.asarray(candidates))
        for j in range(buffer.size()):
            try:
                buffer[j]
            except RuntimeError:
                row = int(candidates[j])
                raise L2DError(
                    f"{split.groundtruth_path}: entry {split.entry(row)} ({split.files[row]!r}): "
                    "image cannot be decoded"
                ) from None
    match = _LOAD_ERROR.search(str(error))
    if match and match.group(1) in split.files:
        row = split.files.index(match.group(1))
        raise L2DError(
            f"{split.groundtruth_path}: entry {split.entry(row)} ({split.files[row]!r}): image "
            "cannot be decoded"
        ) from None
    raise L2DError(f"{split.groundtruth_path}: decoding images failed: {error}") from None


def raise_shape_error(split: SplitRecords, row: int, shape, expected) -> None:
    raise L2DError(
        f"{split.groundtruth_path}: entry {split.entry(row)} ({split.files[row]!r}): image "
        f"shape {tuple(int(s) for s in shape)} differs from {tuple(int(s) for s in expected)} "
        f"(the shape of entry {split.entry(0)}, {split.files[0]!r})"
    )


# The image files MLX-Data's decoder (stb_image) reads, by suffix (any case): what `l2d prepare`
# takes from a folder and `l2d predict --images` routes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".pnm", ".ppm", ".pgm")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def grayscale_jpegs(files) -> np.ndarray:
    """bool ``[N]``: which of ``files`` are JPEGs that store one channel (read from the header,
    not decoded). A file that cannot be opened is left to the decoder to report."""
    from PIL import Image, UnidentifiedImageError

    flags = np.zeros(len(files), bool)
    for i, file in enumerate(files):
        if os.path.splitext(file)[1].lower() in JPEG_SUFFIXES:
            try:
                with Image.open(file) as image:
                    flags[i] = image.mode == "L"
            except (OSError, UnidentifiedImageError):
                pass
    return flags


def stored_channels(images: np.ndarray, shapes: np.ndarray, grayscale_jpeg: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A decoded batch (uint8 ``[b, H, W, C]`` and each image's ``[b, 3]`` shape) with its
    grayscale JPEGs as one channel. A batch that mixes channel counts is refused by the shape
    check that follows, so only a batch of one-channel images keeps one: channel 0, where
    MLX-Data's padding of the narrower images leaves their values."""
    if not grayscale_jpeg.any():
        return images, shapes
    shapes = shapes.copy()
    shapes[grayscale_jpeg, 2] = 1
    return (images[..., :1] if shapes[0, 2] == 1 else images), shapes


def fits_in_memory(split: SplitRecords, num_bytes: int) -> bool:
    """Whether keeping ``num_bytes`` of pixels leaves half of the available memory free.

    When it would not, say so once and stream the split from disk instead of failing later.
    """
    import psutil

    available = psutil.virtual_memory().available
    if num_bytes <= MEMORY_SHARE * available:
        return True
    print(f"l2d: the images of {split.groundtruth_path} need {num_bytes / 2**30:.1f} GiB, more "
          f"than {MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available; decoding them "
          "from disk every epoch (as --stream-from-disk)", file=sys.stderr)
    return False


# File descriptor 2 belongs to the whole process: one decoding thread holds it at a time.
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def c_stderr_held() -> Iterator[None]:
    """Hold back what is written to the process's stderr (file descriptor 2) meanwhile, and
    write it out afterwards, unless an L2DError ends the block: libjpeg prints its own warning
    for a broken JPEG each time one is read (the scan, then the search for the culprit), ahead
    of the one line of l2d that names the file."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        replay = True
        try:
            os.dup2(held.fileno(), 2)
            yield
        except L2DError:
            replay = False
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                held.seek(0)
                os.write(2, held.read())


def decode_all(split: SplitRecords, *, num_threads: int, keep: bool) -> DecodedImages:
    """Decode every image of ``split`` once: check shapes, compute channel stats, maybe keep pixels.

    Raises L2DError naming the first file that cannot be decoded or whose shape differs from
    the first image's (and nothing else on stderr: see ``c_stderr_held``).
    """
    with c_stderr_held():
        return _decode_all(split, num_threads=num_threads, keep=keep)


def _decode_all(split: SplitRecords, *, num_threads: int, keep: bool) -> DecodedImages:
    if num_threads < 1:
        raise L2DError(f"number of decoding threads must be >= 1, got {num_threads}")
    n = split.num_samples
    rows = np.arange(n)
    # The per-sample "shape" key is exact, whereas the batched images may be padded.
    stream = (
        image_buffer(split.files, rows)
        .shape("image", "image_shape")
        .batch(_SCAN_CHUNK)
        .ordered_prefetch(2 * num_threads, num_threads)
    )
    grayscale_jpeg = grayscale_jpegs(split.files)
    expected: np.ndarray | None = None
    pixels: np.ndarray | None = None
    histogram = None  # int64 [C, 256]: how often each uint8 value occurs per channel (exact)
    done = 0
    iterator = iter(stream)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except RuntimeError as e:
            # Every row before `done` decoded, so the first failure at or after it is the culprit.
            raise_decode_error(split, e, rows[done:])
        images, shapes = stored_channels(  # uint8 [b, H, W, C], int64 [b, 3]
            batch["image"], batch["image_shape"], grayscale_jpeg[batch["index"]])
        if expected is None:
            expected = shapes[0].copy()
            if keep and fits_in_memory(split, n * int(np.prod(expected))):
                pixels = np.empty((n, *expected), dtype=np.uint8)
            histogram = np.zeros((expected[2], 256), dtype=np.int64)
        differs = (shapes != expected).any(axis=1)
        if differs.any():
            j = int(np.argmax(differs))
            raise_shape_error(split, int(batch["index"][j]), shapes[j], expected)
        flat = images.reshape(-1, images.shape[-1])
        for c in range(flat.shape[1]):  # bincount is ~6x faster than sums of squares in float64
            histogram[c] += np.bincount(flat[:, c], minlength=256)
        if pixels is not None:
            pixels[done : done + len(images)] = images
        done += len(images)

    values = np.arange(256, dtype=np.float64) / 255.0
    count = n * int(expected[0]) * int(expected[1])
    mean = histogram @ values / count  # float64 [C]
    # Centred second moment from the histogram: exact counts, no cancellation.
    var = (histogram * np.square(values - mean[:, None])).sum(axis=1) / count
    std = np.sqrt(var)
    return DecodedImages(
        shape=(int(expected[0]), int(expected[1]), int(expected[2])),
        channel_mean=mean.astype(np.float32),
        channel_std=std.astype(np.float32),
        pixels=pixels,
        grayscale_jpeg=grayscale_jpeg,
    )
