"""Dynamic batching with TF Serving's parameters, on the server's event loop.

Requests queue until ``max_batch_size`` rows are waiting or the oldest has waited
``batch_timeout_micros``; each batch runs on a thread of its own (``num_batch_threads``,
one per replica by default), padded up to the next of ``allowed_batch_sizes``. Inputs of
different lengths (token ids) are padded to the longest in the batch with the model's pad
value; for text models requests wait in one queue per length bucket (the recipe's
``data.buckets``), so a batch holds sentences of similar length and pads little. More than
``max_enqueued_batches`` waiting batches is over capacity: the request is refused (503),
never queued without bound.
"""
import asyncio
import bisect
import concurrent.futures

import numpy as np

from tfdeploy.serve.servable import RequestError


class Unavailable(RuntimeError):
    """Over capacity or shutting down: HTTP 503 / gRPC UNAVAILABLE."""


def rows_of(rows):
    return sum(len(next(iter(r.values()))) for r in rows)


def combine(rows, servable, batch_to=0):
    """One batch from a list of input dicts (each [n, ...]). An input whose length the
    signature leaves open (token ids) is padded to the longest in the batch with the
    model's pad value; the batch dim is padded to ``batch_to`` by repeating the last row.
    Returns (batch, row counts)."""
    counts = [len(next(iter(r.values()))) for r in rows]
    batch = {}
    for name in rows[0]:
        arrays = [r[name] for r in rows]
        if name in servable.ragged and len(arrays) > 1:
            longest = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
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
    """No batching: each request runs alone on the replicas' threads. When it is the only
    request in flight (``idle``, checked again after a turn of the loop), it runs on the
    event loop's thread instead: no other request is there to be parsed meanwhile, and
    the two thread hand-offs cost a measurable share of a millisecond-model's latency."""

    def __init__(self, servable, threads, idle=None):
        self.servable, self.threads, self.idle = servable, threads, idle
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, "tfdeploy-run")
        self.observe = lambda size: None
        self.running = 0

    async def submit(self, rows):
        batch, counts = combine(rows, self.servable)
        self.observe(sum(counts))
        self.running += 1
        try:
            if self.running == 1 and self.idle is not None and await self.alone():
                outputs = self.servable.run(batch)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self.executor, self.servable.run,
                                                     batch)
        finally:
            self.running -= 1
        return split(outputs, counts)

    async def alone(self):
        """Idle, after one turn of the loop: requests read in the same turn as this one
        start their handlers first (else under load each would find the others not yet
        started and run inline, one after another)."""
        if not self.idle():
            return False
        await asyncio.sleep(0)
        return self.idle() and self.running == 1

    def close(self):
        self.executor.shutdown(wait=True)


class Queue:
    """Requests waiting for one batch (of one length bucket)."""

    def __init__(self):
        self.pending, self.rows, self.timer, self.due, self.since = [], 0, None, False, 0.0


class Batcher(Direct):
    """A batch stays open until it is full, or its timeout has passed *and* a batch
    thread is free: while every thread is busy it keeps filling (a batch closed early
    would wait for a thread all the same, with fewer rows)."""

    def __init__(self, servable, params, threads):
        super().__init__(servable, threads)
        self.params, self.running, self.queues, self.full = params, 0, {}, []
        self.buckets = sorted(servable.buckets) if servable.ragged else []

    def bucket(self, rows):
        if not self.buckets:
            return 0
        name = next(iter(self.servable.ragged))
        longest = max(r[name].shape[1] for r in rows)
        return bisect.bisect_left(self.buckets, longest)

    def waiting_batches(self):
        """Batches not yet running: the full ones and every open one with a request."""
        return len(self.full) + sum(1 for q in self.queues.values() if q.pending)

    async def submit(self, rows):
        n, p = rows_of(rows), self.params
        if n > p.max_batch_size:
            raise RequestError(f"Task size {n} is larger than maximum input batch size "
                               f"{p.max_batch_size}")
        loop = asyncio.get_running_loop()
        queue = self.queues.setdefault(self.bucket(rows), Queue())
        fits = queue.pending and queue.rows + n <= p.max_batch_size
        if not fits and self.waiting_batches() >= p.max_enqueued_batches:
            raise Unavailable("The batch scheduling queue to which this task was submitted "
                              "is full")
        if queue.rows + n > p.max_batch_size:
            self._close(queue)
        future = loop.create_future()
        if not queue.pending:
            queue.since = loop.time()
        queue.pending.append((rows, future))
        queue.rows += n
        if queue.rows >= p.max_batch_size:
            self._close(queue)
        elif queue.timer is None:
            queue.timer = loop.call_later(p.batch_timeout_micros / 1e6, self._due, queue)
        self._schedule()
        return await future

    def _close(self, queue):
        """A full batch: it waits for a thread as it is."""
        if queue.timer is not None:
            queue.timer.cancel()
        self.full.append(queue.pending)
        queue.pending, queue.rows, queue.timer, queue.due = [], 0, None, False

    def _due(self, queue):
        queue.timer, queue.due = None, True
        self._schedule()

    def _schedule(self):
        """Start batches while threads are free: full ones first, then timed-out ones
        (the oldest first: no length bucket starves)."""
        while self.running < self.threads:
            if self.full:
                taken = self.full.pop(0)
            else:
                due = [q for q in self.queues.values() if q.due and q.pending]
                if not due:
                    return
                queue = min(due, key=lambda q: q.since)
                taken = queue.pending
                queue.pending, queue.rows, queue.due = [], 0, False
            self.running += 1
            asyncio.get_running_loop().create_task(self._run(taken))

    async def _run(self, taken):
        try:
            rows = [r for request, _ in taken for r in request]
            total = rows_of(rows)
            size = next((s for s in self.params.allowed_batch_sizes if s >= total), total)
            batch, counts = combine(rows, self.servable, size)
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
            self._schedule()
