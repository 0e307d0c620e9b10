"""The candidate beside the primary on a sample of live batches, in a thread of its own, one batch
at a time: a sampled batch that arrives while the candidate still works on the last one is
dropped (counted, by reason), so its work is bounded and the primary never waits for it. What it
answers is only compared (handlers/experiment/pairing.py), never returned."""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..model.device import single_threaded_torch
from ..request.answers import probabilities
from ..request.batch import Batch
from ..request.errors import RequestError

logger = logging.getLogger(__name__)


class Shadow:
    def __init__(self, engine, pairing, sample: float, decode=None):
        """`decode(images) -> pixels or RequestError per image` where the candidate's recipe
        differs from the primary's (None: it takes the primary's pixels)."""
        self.engine, self.pairing, self.sample, self.decode = engine, pairing, sample, decode
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=single_threaded_torch)
        self.idle = threading.Semaphore(1)
        self.pending = None  # the future of the batch it works on (tests wait on it)

    def offer(self, batch: Batch, primary_seconds: float) -> None:
        """A batch the primary answered (its pixels and probabilities): sampled, and run if free."""
        if batch.probs is None or random.random() >= self.sample:
            return
        if not self.idle.acquire(blocking=False):
            self.pairing.drop("busy")
            return
        images = batch.images() if self.decode is not None else None
        self.pending = self.thread.submit(self._run, batch.pixels, images, batch.probs, primary_seconds)

    def _run(self, pixels, images, primary_probs, primary_seconds) -> None:
        try:
            if images is not None:
                decoded = self.decode(images)
                if any(isinstance(p, RequestError) for p in decoded):  # the candidate's recipe refuses one
                    self.pairing.drop("decode")
                    return
                pixels = torch.stack(decoded)
            start = time.perf_counter()
            candidate = probabilities(self.engine.run(pixels).logits)
            self.pairing.record(primary_probs.cpu(), candidate.cpu(), primary_seconds, time.perf_counter() - start)
        except Exception:  # the candidate's fault: logged and counted, never the primary's
            logger.exception("shadow candidate failed on a batch")
            self.pairing.drop("error")
        finally:
            self.idle.release()
