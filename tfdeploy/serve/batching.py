"""Dynamic batching with TF Serving's parameters, on the server's event loop.

Requests queue until ``max_batch_size`` rows are waiting or the oldest has waited
``batch_timeout_micros``; each batch runs on a thread of its own (``num_batch_threads``,
one per replica by default), padded up to the next of ``allowed_batch_sizes``. Inputs of
different lengths (token ids) are padded to the longest in the batch, rounded up to a
bucket, with the model's pad value. More than ``max_enqueued_batches`` waiting batches
is over capacity: the request is refused (503), never queued without bound.
"""
import asyncio
import concurrent.futures

import numpy as np

from tfdeploy.serve.servable import RequestError


class Unavailable(RuntimeError):
    """Over capacity or shutting down: HTTP 503 / gRPC UNAVAILABLE."""


def combine(rows, servable, buckets=(), batch_to=0):
    """One batch from a list of input dicts (each [n, ...]). An input whose length the
    signature leaves open (token ids) is padded to the longest in the batch, rounded up to
    a bucket, with the model's pad value; the batch dim is padded to ``batch_to`` by
    repeating the last row. Returns (batch, row counts)."""
    counts = [len(next(iter(r.values()))) for r in rows]
    batch = {}
    for name in rows[0]:
        arrays = [r[name] for r in rows]
        if name in servable.ragged:
            longest = max(a.shape[1] for a in arrays)
            length = next((b for b in sorted(buckets) if b >= longest), longest)
            arrays = [np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             constant_values=servable.pad_values[name]) for a in arrays]
        batch[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    total = sum(counts)
    if batch_to > total:
        batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_to - total, axis=0)])
                 for k, v in batch.items()}
    return batch, counts


def split(outputs, counts):
    out, start = [], 0
    for n in counts:
        out.append({k: v[start:start + n] for k, v in outputs.items()})
        start += n
    return out


class Direct:
    """No batching: each request runs alone on the replicas' threads."""

    def __init__(self, servable, threads, buckets=()):
        self.servable, self.buckets, self.threads = servable, buckets, threads
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, "tfdeploy-run")
        self.observe = lambda size: None

    async def submit(self, rows):
        batch, counts = combine(rows, self.servable, self.buckets)
        self.observe(sum(counts))
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.executor, self.servable.run, batch)
        return split(outputs, counts)

    def close(self):
        self.executor.shutdown(wait=True)


class Batcher(Direct):
    def __init__(self, servable, params, threads, buckets=()):
        super().__init__(servable, threads, buckets)
        self.params = params
        self.pending, self.rows, self.running = [], 0, 0
        self._timer = None

    async def submit(self, rows):
        n = sum(len(next(iter(r.values()))) for r in rows)
        p = self.params
        if n > p.max_batch_size:
            raise RequestError(f"Task size {n} is larger than maximum input batch size "
                               f"{p.max_batch_size}")
        waiting = self.running + (self.rows + n + p.max_batch_size - 1) // p.max_batch_size
        if waiting > p.max_enqueued_batches + self.threads:
            raise Unavailable("The batch scheduling queue to which this task was submitted "
                              "is full")
        if self.rows + n > p.max_batch_size:
            self._flush()
        future = asyncio.get_running_loop().create_future()
        self.pending.append((rows, future))
        self.rows += n
        if self.rows >= p.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                p.batch_timeout_micros / 1e6, self._flush)
        return await future

    def _flush(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.pending:
            return
        taken, self.pending, self.rows = self.pending, [], 0
        self.running += 1
        asyncio.get_running_loop().create_task(self._run(taken))

    async def _run(self, taken):
        try:
            rows = [r for request, _ in taken for r in request]
            total = sum(len(next(iter(r.values()))) for r in rows)
            size = next((s for s in self.params.allowed_batch_sizes if s >= total), total)
            batch, counts = combine(rows, self.servable, self.buckets, size)
            self.observe(size)
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, self.servable.run, batch)
            parts, start = split(outputs, counts), 0
            for request, future in taken:
                if not future.done():
                    future.set_result(parts[start:start + len(request)])
                start += len(request)
        except Exception as e:  # noqa: BLE001 — every waiting request gets the failure
            for _, future in taken:
                if not future.done():
                    future.set_exception(e)
        finally:
            self.running -= 1
