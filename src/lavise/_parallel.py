"""Forward passes side by side on a CPU: several threads, each with a share of the cores.

On a small CPU a batch-1 forward pass split across every intra-op thread leaves cores
idle (synchronisation at each layer); independent passes run side by side in threads,
each with an equal share of the intra-op threads, use the cores better
(``docs/performance.md``). With one intra-op thread per pass the results are exactly
the one-thread results. Used by feature extraction and the ``image`` masking method.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

__all__ = ["InOrder", "side_by_side", "resolve_passes"]

#: At most this many passes side by side by default (beyond it, batch-1 passes on many
#: cores have not been measured).
MAX_DEFAULT_PASSES = 4


def resolve_passes(passes: int | None, device: torch.device | str) -> int:
    """How many forward passes to run at once.

    Args:
        passes: Requested number, or None: on a CPU the intra-op thread count, at most
            :data:`MAX_DEFAULT_PASSES`; on a GPU 1.

    Raises:
        ValueError: If ``passes`` is below 1.
    """
    if passes is None:
        return min(torch.get_num_threads(), MAX_DEFAULT_PASSES) if torch.device(device).type == "cpu" else 1
    if passes < 1:
        raise ValueError(f"forward passes side by side must be >= 1, got {passes}")
    return int(passes)


@contextmanager
def side_by_side(passes: int, name: str) -> Iterator[ThreadPoolExecutor | None]:
    """A thread pool of ``passes`` threads sharing the intra-op threads, or None for 1.

    The intra-op thread count is divided while the pool's threads start (they read it
    then) and restored on exit, also on error; the pool is shut down on exit.
    """
    if passes <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // passes))
    pool = ThreadPoolExecutor(passes, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


class InOrder:
    """Runs calls in a pool, at most ``limit`` in flight, and hands each result to ``sink``
    in the order the calls were submitted (without a pool: at once, in the caller).

    Args:
        pool: From :func:`side_by_side`, or None.
        sink: Called as ``sink(key, result)``.
        limit: Calls in flight at most before :meth:`submit` waits for the oldest.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, sink: Callable[[Any, Any], None], limit: int) -> None:
        self.pool, self.sink, self.limit = pool, sink, limit
        self._running: deque = deque()  # (key, future)

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` and hands its result to the sink under ``key``."""
        if self.pool is None:
            self.sink(key, fn(*args))
            return
        self._running.append((key, self.pool.submit(fn, *args)))
        self.drain(self.limit)

    def drain(self, keep: int = 0) -> None:
        """Hands results to the sink until at most ``keep`` calls are in flight (re-raises a call's error)."""
        while len(self._running) > keep:
            key, future = self._running.popleft()
            self.sink(key, future.result())
