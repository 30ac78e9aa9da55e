"""Dynamic batching: concurrent requests are gathered into one model call, run in a worker thread.

A batch opens when the first item arrives and closes when it holds `max_batch` items or `timeout_s` has passed since
it opened (TF Serving's max_batch_size / batch_timeout_micros). Items that queued up while the model was busy go into
the next batch at once. The model function runs in a single worker thread per model, so the event loop keeps
accepting and answering requests while the model works, and calls to one model never overlap.

Example:
    >>> batcher = DynamicBatcher(lambda items: [x * 2 for x in items], max_batch=8, timeout_s=0.005)
    >>> await batcher.submit([1, 2, 3])
    [2, 4, 6]
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from typing import Callable


class QueueFull(Exception):
    """More items are waiting than the batcher accepts; the request should be retried later (HTTP 503)."""


class DynamicBatcher:
    """Gathers items from concurrent `submit` calls into batches for `fn(list) -> list` (same length, same order).

    Args:
        fn: the batched function (e.g. a model's predict); runs in this batcher's worker thread.
        max_batch: most items per call (>= 1).
        timeout_s: longest wait, from the first item of a batch, for more items before running a partial batch.
        max_queue: most items waiting; beyond it `submit` raises QueueFull instead of queueing without bound.
        name: used in the worker thread's name.

    Attributes:
        batch_sizes: collections.Counter {size: number of calls} of the batches run so far.
    """

    def __init__(self, fn: Callable[[list], list], max_batch: int = 16, timeout_s: float = 0.01,
                 max_queue: int = 4096, name: str = "model"):
        if int(max_batch) < 1 or float(timeout_s) < 0:
            raise ValueError("max_batch must be >= 1 and timeout_s >= 0")
        self.fn, self.max_batch, self.timeout_s = fn, int(max_batch), float(timeout_s)
        self.max_queue, self.name = int(max_queue), name
        self.batch_sizes: collections.Counter = collections.Counter()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._pending: collections.deque = collections.deque()  # (item, future)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure_worker(self) -> None:
        """Starts the gathering task on the running loop (again, when a new loop runs the app, as in tests)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._task is None or self._loop is not loop or self._task.done():
                self._loop, self._wakeup = loop, asyncio.Event()
                self._pending.clear()
                self._task = loop.create_task(self._gather(), name=f"batcher-{self.name}")

    async def submit(self, items: list) -> list:
        """Queues the items, waits for their batches and returns their results in order. An exception raised by
        `fn` for a batch is raised here for every request with an item in that batch."""
        if not items:
            return []
        self._ensure_worker()
        if len(self._pending) + len(items) > self.max_queue:
            raise QueueFull(f"{len(self._pending)} items are waiting for the {self.name} model; retry shortly")
        futures = [self._loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.timeout_s
            while len(self._pending) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [(item, future) for item, future in batch if not future.done()]  # a client went away
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await loop.run_in_executor(self._executor, self._call, [item for item, _ in batch])
            except Exception as e:  # the model failed: every request in this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _call(self, items: list) -> list:
        results = list(self.fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"the {self.name} model returned {len(results)} results for {len(items)} inputs")
        return results

    def close(self) -> None:
        """Stops the gathering task and the worker thread (after the call in progress, if any)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
