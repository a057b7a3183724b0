"""Dynamic batching with TF Serving's parameters.

Requests queue until ``max_batch_size`` rows are waiting or the oldest has waited
``batch_timeout_micros``; batch threads (``num_batch_threads``, one per replica by
default) take the batches and run them, each padded up to the next of
``allowed_batch_sizes``. Inputs of different lengths (token ids) are padded to the longest
in the batch with the model's pad value; for text models requests wait in one queue per
length bucket (the recipe's ``data.buckets``), so a batch holds sentences of similar length
and pads little. More than ``max_enqueued_batches`` waiting batches is over capacity: the
request is refused (503), never queued without bound.
"""
import asyncio
import bisect
import collections
import concurrent.futures
import threading
import time

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
    Written into one preallocated array per input (``np.pad`` per row cost more than the
    model's share of a small batch).
    Returns (batch, row counts)."""
    counts = [len(next(iter(r.values()))) for r in rows]
    total = sum(counts)
    size = max(total, batch_to)
    if len(rows) == 1 and size == total:
        return rows[0], counts
    batch = {}
    for name in rows[0]:
        arrays = [r[name] for r in rows]
        first = arrays[0]
        ragged = name in servable.ragged
        if ragged:
            shape = (size, max(a.shape[1] for a in arrays)) + first.shape[2:]
            out = np.full(shape, servable.pad_values[name], first.dtype)
        else:
            out = np.empty((size,) + first.shape[1:], first.dtype)
        start = 0
        for a in arrays:
            if ragged:
                out[start:start + len(a), :a.shape[1]] = a
            else:
                out[start:start + len(a)] = a
            start += len(a)
        out[total:] = out[total - 1]
        batch[name] = out
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
        self.pending, self.rows, self.since = [], 0, 0.0


class Batcher:
    """Batch threads pull batches: a free thread takes a full batch, else the oldest one
    whose timeout has passed, else waits for one. A batch stays open while every thread
    is busy (one closed early would wait for a thread all the same, with fewer rows), and
    a thread that finishes takes the next batch itself: handing it over through the event
    loop left the model idle for most of a millisecond per batch, behind the answers of
    the batch just ended. Queues are shared with the loop under one lock; answers go back
    to the loop with ``call_soon_threadsafe``."""

    def __init__(self, servable, params, threads):
        self.servable, self.params = servable, params
        self.observe = lambda size: None
        self.queues, self.full, self.closing = {}, collections.deque(), False
        self.cond = threading.Condition()
        self.buckets = sorted(servable.buckets) if servable.ragged else []
        self.threads = [threading.Thread(target=self._work, name=f"tfdeploy-batch-{i}",
                                         daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

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
        future = loop.create_future()
        with self.cond:
            if self.closing:
                raise Unavailable("This model version is being unloaded")
            queue = self.queues.setdefault(self.bucket(rows), Queue())
            fits = queue.pending and queue.rows + n <= p.max_batch_size
            if not fits and self.waiting_batches() >= p.max_enqueued_batches:
                raise Unavailable("The batch scheduling queue to which this task was "
                                  "submitted is full")
            wake = queue.rows + n > p.max_batch_size  # a full batch, or a new due time
            if wake:
                self._close(queue)
            if not queue.pending:
                queue.since, wake = time.monotonic(), True
            queue.pending.append((rows, future, loop))
            queue.rows += n
            if queue.rows >= p.max_batch_size:
                self._close(queue)
            if wake or not queue.pending:  # (a request into an open batch changes neither)
                self.cond.notify()
        return await future

    def _close(self, queue):
        """A full batch: it waits for a thread as it is."""
        self.full.append(queue.pending)
        queue.pending, queue.rows = [], 0

    def _take(self):
        """The next batch for a free thread (None when closed and drained): full ones
        first, then timed-out ones, the oldest first (no length bucket starves)."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self.cond:
            while True:
                if self.full:
                    return self.full.popleft()
                now = time.monotonic()
                waiting = [q for q in self.queues.values() if q.pending]
                due = [q for q in waiting if self.closing or now - q.since >= timeout]
                if due:
                    queue = min(due, key=lambda q: q.since)
                    taken, queue.pending, queue.rows = queue.pending, [], 0
                    return taken
                if self.closing:
                    return None
                self.cond.wait(min((q.since + timeout - now for q in waiting),
                                   default=None))

    def _work(self):
        while (taken := self._take()) is not None:
            try:
                rows = [r for request, _, _ in taken for r in request]
                total = rows_of(rows)
                size = next((s for s in self.params.allowed_batch_sizes if s >= total),
                            total)
                batch, counts = combine(rows, self.servable, size)
                self.observe(size)
                answer = split(self.servable.run(batch), counts)
            except Exception as e:  # noqa: BLE001 — every waiting request gets the failure
                answer = e
            try:
                taken[0][2].call_soon_threadsafe(deliver, taken, answer)
            except RuntimeError:  # the loop has closed: nobody waits for these answers
                pass

    def close(self):
        """Runs what is queued, then stops the threads."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()


def deliver(taken, answer):
    """On the loop: each request its rows of the batch's outputs, or the failure."""
    start = 0
    for request, future, _ in taken:
        if not future.done():
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer[start:start + len(request)])
        start += len(request)
