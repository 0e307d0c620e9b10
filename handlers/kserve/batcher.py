"""Dynamic batching with the meaning of TorchServe's batchSize and maxBatchDelay: the first
request waiting opens a batch, which takes what arrives until it holds `size` requests or
`delay_s` has passed since it opened, then runs as one pass of the request core, in a thread of
its own, while the next batch gathers. REST and gRPC requests share the one queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..core.exchange import Answer, Item
from ..request.errors import internal_error

logger = logging.getLogger(__name__)


class Batcher:
    def __init__(self, handle: Callable[[list[Item]], list[Answer]], size: int, delay_s: float):
        self.handle, self.size, self.delay_s = handle, max(1, size), max(0.0, delay_s)
        self.runner = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0

    async def answer(self, item: Item) -> Answer:
        """The answer to one request, once the batch it joined has run."""
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._serve(), name="batcher")
        future = loop.create_future()
        self.queue.put_nowait((item, future))
        return await future

    @property
    def alive(self) -> bool:
        return self.task is None or not self.task.done()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.delay_s
            while len(batch) < self.size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.done()]  # a client gone: not run
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self.runner, self.handle, [item for item, _ in batch])
            except Exception as exc:  # a fault outside any one request: each gets a 500, logged
                logger.exception("a batch failed")
                error = internal_error("running", exc)
                answers = [Answer(500, error.to_body(), {"content-type": "application/json"}, error=error)] * len(batch)
            self.batches += 1
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)
