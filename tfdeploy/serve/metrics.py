"""Prometheus text exposition of request counts, errors, latency and batch sizes (the
kind of series TF Serving's ``/monitoring/prometheus/metrics`` has)."""
import bisect
import collections
import threading

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    def __init__(self, bounds):
        self.bounds, self.counts = bounds, [0] * (len(bounds) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name, labels):
        total = 0
        for bound, n in zip(list(self.bounds) + ["+Inf"], self.counts):
            total += n
            yield f'{name}_bucket{{{labels},le="{bound}"}} {total}'
        yield f"{name}_sum{{{labels}}} {self.sum}"
        yield f"{name}_count{{{labels}}} {self.count}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()   # (model, api, status) -> n
        self.latency = collections.defaultdict(lambda: Histogram(LATENCY_BUCKETS_MS))
        self.batches = Histogram(BATCH_BUCKETS)
        self.in_flight = 0  # requests being answered (REST and gRPC), on the event loop

    def idle(self):
        """True while at most one request is being answered (the caller's own)."""
        return self.in_flight <= 1

    def request(self, model, api, status, ms):
        with self._lock:
            self.requests[(model, api, str(status))] += 1
            self.latency[(model, api)].observe(ms)

    def batch(self, size):
        with self._lock:
            self.batches.observe(size)

    def text(self):
        with self._lock:
            out = ["# TYPE tfdeploy_requests_total counter"]
            for (model, api, status), n in sorted(self.requests.items()):
                out.append(f'tfdeploy_requests_total{{model="{model}",api="{api}",'
                           f'status="{status}"}} {n}')
            out.append("# TYPE tfdeploy_request_errors_total counter")
            errors = collections.Counter()
            for (model, api, status), n in self.requests.items():
                if not status.startswith("2") and status != "OK":
                    errors[(model, api)] += n
            for (model, api), n in sorted(errors.items()):
                out.append(f'tfdeploy_request_errors_total{{model="{model}",api="{api}"}} {n}')
            out.append("# TYPE tfdeploy_request_latency_ms histogram")
            for (model, api), hist in sorted(self.latency.items()):
                out.extend(hist.lines("tfdeploy_request_latency_ms",
                                      f'model="{model}",api="{api}"'))
            out.append("# TYPE tfdeploy_requests_in_flight gauge")
            out.append(f"tfdeploy_requests_in_flight {self.in_flight}")
            out.append("# TYPE tfdeploy_batch_size histogram")
            out.extend(self.batches.lines("tfdeploy_batch_size", 'queue="all"'))
        return "\n".join(out) + "\n"
