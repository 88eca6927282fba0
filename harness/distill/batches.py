"""Batches: length-grouped training order, length-sorted evaluation, dynamic padding, and the next batches built
on a background thread (:func:`prefetch`).

Training batches are random within groups of :data:`GROUP_CHUNK` batches of similar length (seeded by the
seed and the epoch, so a resumed epoch sees the same order); a batch is padded to its longest example.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from harness.data.encoding import EncodedSplit, collate

GROUP_CHUNK = 50


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-grouped, shuffled batches of example indices; a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * GROUP_CHUNK
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_lengths(data: EncodedSplit) -> np.ndarray:
    return np.fromiter((len(f["input_ids"]) for f in data.features), dtype=np.int64, count=len(data))


def to_batch(data: EncodedSplit, index: np.ndarray, pad_token_id: int, device: torch.device) -> dict:
    batch = collate([data.features[i] for i in index], data.labels[index], pad_token_id)
    return {name: to_device(tensor, device) for name, tensor in batch.items()}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device copy; on CUDA from pinned memory, so that it overlaps with compute."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def prefetch(make, items, depth: int = 2):
    """``make(item)`` for every item, computed ``depth`` items ahead on a background thread, in order.

    The training loop uses it to collate the next batches and start their host-to-device copies (pinned,
    non-blocking on CUDA) while the device works on the current one. An exception in ``make`` is raised
    in the consumer; a consumer that stops early (pruning, a failed trial) stops the thread.
    """
    queue_: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                value = make(item)
                while not stop.is_set():
                    try:
                        queue_.put(value, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            queue_.put(done)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            queue_.put(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (value := queue_.get()) is not done:
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
