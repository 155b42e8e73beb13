"""Batches of NumPy arrays for training and evaluation, produced ahead of time in the background.

Every batch is a dict of NumPy arrays with fixed shapes::

    image          uint8 [B, H, W, C]  raw pixels (normalisation and augmentation run on device)
    label          int32 [B]           ground-truth class
    expert_labels  int32 [B, K]        expert k's label in column k
    mask           bool  [B]           eval batches only: True for real samples, False for padding

Training batches follow ``epoch_order(seed, epoch)`` and drop the short last batch; evaluation
batches follow the manifest order and pad the last batch (padding rows: zero image, labels 0,
mask False), so every sample counts exactly once and shapes never change.

Both come from the same background producer: a thread fills a bounded queue of ``prefetch_size``
batches as soon as the iterator is created, either by gathering rows of the decoded pixels kept in
memory or by decoding from disk through MLX-Data (``load_image`` + ``ordered_prefetch`` on
``num_threads`` threads). Both modes give identical batches.

Sharding for several processes: ``shard=(index, count)`` gives process ``index`` the rows
``[index * B / count, (index + 1) * B / count)`` of every global batch of size ``B``, so the
processes together see exactly the global batches, each its own equal part.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from l2d.data.images import (
    DecodedImages,
    image_buffer,
    raise_decode_error,
    raise_shape_error,
    stored_channels,
)
from l2d.data.manifest import SplitRecords
from l2d.errors import L2DError

Batch = dict[str, np.ndarray]


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the samples: a pure function of (seed, epoch)."""
    if seed < 0 or epoch < 0:
        raise L2DError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def train_steps_per_epoch(
    num_samples: int, batch_size: int, *, manifest: str = "the training split"
) -> int:
    """Full batches per epoch (the short last batch is dropped); ``manifest`` names the split."""
    if batch_size < 1:
        raise L2DError(f"batch size must be >= 1, got {batch_size}")
    if num_samples < batch_size:
        raise L2DError(
            f"{manifest}: has {num_samples} samples, fewer than one batch of {batch_size}"
        )
    return num_samples // batch_size


def eval_steps(num_samples: int, batch_size: int) -> int:
    """Batches that ``eval_batches`` yields: every sample once, the last batch padded."""
    if batch_size < 1:
        raise L2DError(f"batch size must be >= 1, got {batch_size}")
    return -(-num_samples // batch_size)


def _check_threads(num_threads: int) -> None:
    if num_threads < 1:
        raise L2DError(f"number of loader threads must be >= 1, got {num_threads}")


def _local_columns(batch_size: int, shard: tuple[int, int]) -> slice:
    """The columns of a global batch that process ``shard[0]`` of ``shard[1]`` takes."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise L2DError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    if batch_size % count:
        raise L2DError(
            f"batch size {batch_size} is not divisible by the number of processes {count}"
        )
    local = batch_size // count
    return slice(index * local, (index + 1) * local)


def train_batches(
    split: SplitRecords,
    images: DecodedImages,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    prefetch_size: int,
    num_threads: int,
    shard: tuple[int, int] = (0, 1),
    first_step: int = 0,
) -> Iterator[Batch]:
    """One training epoch: full batches in ``epoch_order(seed, epoch)``; short last batch dropped.

    ``first_step`` skips the epoch's first batches (a run resumed mid-epoch continues with the
    batch it had not trained). ``batch_size`` is the global batch; with ``shard`` each process
    gets its part of it.
    ``num_threads`` decoding threads are used only when ``images.pixels`` is None. Prefetching
    starts when this is called; ``close()`` the iterator (or use it in ``with``) to stop early.
    """
    steps = train_steps_per_epoch(split.num_samples, batch_size, manifest=split.groundtruth_path)
    _check_threads(num_threads)
    columns = _local_columns(batch_size, shard)
    order = epoch_order(split.num_samples, seed, epoch)[: steps * batch_size]
    rows = order.reshape(steps, batch_size)[first_step:, columns]
    source = _produce(split, images, rows, None, prefetch_size, num_threads)
    return _Prefetcher(source, prefetch_size)


def eval_batches(
    split: SplitRecords,
    images: DecodedImages,
    *,
    batch_size: int,
    prefetch_size: int,
    num_threads: int,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """All samples in manifest order, the last batch padded, with ``mask`` marking real rows."""
    steps = eval_steps(split.num_samples, batch_size)
    _check_threads(num_threads)
    columns = _local_columns(batch_size, shard)
    padded = np.arange(steps * batch_size)
    mask = padded < split.num_samples
    padded[~mask] = 0  # padding rows read sample 0, then are zeroed
    rows = padded.reshape(steps, batch_size)[:, columns]
    mask = mask.reshape(steps, batch_size)[:, columns]
    source = _produce(split, images, rows, mask, prefetch_size, num_threads)
    return _Prefetcher(source, prefetch_size)


def _produce(
    split: SplitRecords,
    images: DecodedImages,
    rows: np.ndarray,
    mask: np.ndarray | None,
    prefetch_size: int,
    num_threads: int,
) -> Iterator[Batch]:
    """Yield the batches of ``rows`` [steps, b] (with ``mask`` [steps, b] for eval), in order."""
    if images.pixels is not None:
        pixel_batches = (np.take(images.pixels, r, axis=0) for r in rows)
    else:
        pixel_batches = _decode_batches(split, images, rows, prefetch_size, num_threads)
    for step, pixels in enumerate(pixel_batches):
        r = rows[step]
        batch = {
            "image": pixels,
            "label": split.labels[r],
            "expert_labels": split.expert_labels[r],
        }
        if mask is not None:
            m = mask[step]
            if not m.all():
                for key in ("image", "label", "expert_labels"):
                    batch[key][~m] = 0  # fancy indexing above made fresh, writeable arrays
            batch["mask"] = m.copy()
        yield batch


def _decode_batches(
    split: SplitRecords,
    images: DecodedImages,
    rows: np.ndarray,
    prefetch_size: int,
    num_threads: int,
) -> Iterator[np.ndarray]:
    """uint8 [b, H, W, C] per row of ``rows``, decoded from disk by MLX-Data in order."""
    steps, local = rows.shape
    stream = (
        image_buffer(split.files, rows.reshape(-1))
        .shape("image", "image_shape")  # exact, whereas batching pads mixed shapes silently
        .batch(local)
        .ordered_prefetch(max(prefetch_size, num_threads), num_threads)
    )
    iterator = iter(stream)
    for step in range(steps):
        try:
            batch = next(iterator)
        except RuntimeError as e:
            raise_decode_error(split, e, rows[step:].reshape(-1))
        pixels, shapes = stored_channels(batch["image"], batch["image_shape"],
                                         images.grayscale_jpeg[rows[step]])
        differs = (shapes != images.shape).any(axis=1)
        if differs.any():  # a file changed on disk since decode_all checked it
            j = int(np.argmax(differs))
            raise_shape_error(split, int(rows[step, j]), shapes[j], images.shape)
        yield pixels


_END = object()


class _Prefetcher:
    """Iterates ``source`` on a background thread, keeping up to ``size`` items ready in a queue.

    Errors raised by ``source`` are re-raised in the consuming thread, in order. The thread holds
    no reference to the prefetcher, so dropping an unfinished iterator stops it too.
    """

    def __init__(self, source: Iterator[Batch], size: int):
        if size < 1:
            raise L2DError(f"prefetch size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce_into,
            args=(source, self._queue, self._stop),
            name="l2d-prefetch",
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the producer and drop the batches it prepared."""
        self._done = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def _produce_into(source: Iterator[Batch], out: queue.Queue, stop: threading.Event) -> None:
    """Thread body: move the items of ``source`` into ``out``, then ``_END`` or the error raised."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put(item):
                return
        put(_END)
    except BaseException as e:  # noqa: BLE001 -- handed to the consumer
        put(e)
    finally:
        source.close()
