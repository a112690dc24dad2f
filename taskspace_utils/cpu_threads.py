"""Forward passes without autograd spread over the CPU's threads by batch (:func:`for_each_batch`).

On the CPU, torch splits every operation across its intra-op threads. For the small models of the
suite most of a forward pass is operations too small to split well (layer norms, rotary
embeddings, attention over rows of 128 positions, the head's log-softmax), so two threads are far
from twice one. Giving each thread whole batches instead (intra-op threads set to 1 meanwhile)
keeps both busy. Measured 2026-11-29 on tiny-m, 2 idle cores, the runner's kernel environment, the
probing evaluation (67 tasks x 100 test pairs, 116 prefix-tree batches), three alternations:

    2 intra-op threads        6.55 / 6.59 / 6.64 s wall, 13.0-13.2 CPU s
    2 threads x 1 batch each  5.58 / 5.66 / 5.54 s wall, 10.9-11.1 CPU s      (margins bitwise equal)

The bare matmul at a model shape (``[4096, 192] x [192, 768]``) does the opposite: 192 GFLOP/s
with two intra-op threads against 179 for two single-threaded products at once, so the gain is in
the work around the products, and a model made of large products gains less. Each batch's numbers
do not depend on the thread that runs it (one thread per operation: no partition of a reduction
across threads), so results are the same in any order.

Why not a library: ``torch.utils.data.DataLoader`` parallelises loading, not the forward pass, and
``torch.multiprocessing`` would copy the model into other processes; threads share it (torch
releases the GIL inside its operations).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["batch_threads", "for_each_batch"]


def batch_threads(device) -> int:
    """How many batches :func:`for_each_batch` runs at once on ``device``: torch's intra-op thread
    count on the CPU when autograd is off, else 1 (a GPU, or a backward pass: its gradients
    accumulate into shared ``.grad`` tensors)."""
    if torch.device(device).type != "cpu" or torch.is_grad_enabled():
        return 1
    return max(1, torch.get_num_threads())


def for_each_batch(work: Callable[[object], None], items: Iterable, device) -> None:
    """Call ``work(item)`` for every item, :func:`batch_threads` items at a time.

    With more than one thread (the caller and ``n - 1`` started here), each takes the next item
    from ``items`` (under a lock, so a lazy iterator is collated one item at a time) and runs it
    with torch's intra-op threads set to 1; the caller's intra-op thread count is restored
    afterwards. ``work`` must write its results itself, to disjoint places (e.g.
    ``out[index] = ...``). The caller's inference mode holds in the threads. The first exception
    stops the other threads after their current item and is raised here. Setting the intra-op
    thread count is process-wide: two calls from two threads of the caller at once would each see
    the other's setting (the kit makes none).
    """
    n = batch_threads(device)
    iterator = iter(items)
    if n == 1:
        for item in iterator:
            work(item)
        return
    inference = torch.is_inference_mode_enabled()
    lock, stop = threading.Lock(), threading.Event()

    def worker() -> None:
        with torch.inference_mode(inference), torch.no_grad():
            while not stop.is_set():
                with lock:
                    item = next(iterator, stop)
                if item is stop:
                    return
                try:
                    work(item)
                except BaseException:
                    stop.set()
                    raise

    intra = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the calling thread is one of the n: one thread (and malloc arena) fewer to start and warm up
        with ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="taskspace-batch") as pool:
            futures = [pool.submit(worker) for _ in range(n - 1)]
            try:
                worker()
                for future in futures:
                    future.result()
            finally:
                stop.set()
    finally:
        torch.set_num_threads(intra)
