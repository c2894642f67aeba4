"""Overlap producing batches (decoding images) with consuming them (the forward pass).

:func:`prefetch` runs an iterable in a background thread and hands its items over a
bounded queue, so the next batch is decoded while the model runs on the current one.
PIL's JPEG decoder and torchvision's resize release the GIL, so a thread overlaps
with the forward pass without worker processes (which need pickling and start-up).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")

_DONE = object()


class _Raised:
    """Carries an exception of the producer thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yields the items of ``iterable``, produced ahead by a background thread.

    Args:
        iterable: Produces items (e.g. a DataLoader with ``num_workers=0``).
        depth: Items produced ahead at most (bounds memory).

    Raises:
        Whatever the iterable raises, in the consumer, at the item where it raised.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer
            put(_Raised(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="lavise-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
