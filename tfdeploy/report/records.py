"""What the report reads from a run's records."""


def fmt(value, spec):
    return "" if value is None else format(value, spec)


def artifacts(summary):
    return [r for r in summary["records"] if r["artifact"] != "keras"]


def batch_sizes(records):
    return sorted({int(k[6:]) for r in records for k in (r.get("latency") or {})})


def latency(rec, batch):
    return ((rec.get("latency") or {}).get(f"batch_{batch}") or {}).get("median_ms")


def recommend(summary):
    """{goal: record} among artifacts that passed their gates (fastest, smallest)."""
    passed = [r for r in artifacts(summary) if r.get("gate", "passed") == "passed"]
    out = {}
    timed = [r for r in passed if batch_sizes([r])]
    if timed:
        first = min(batch_sizes(timed))
        out[f"fastest (batch {first})"] = min(
            (r for r in timed if latency(r, first) is not None), key=lambda r: latency(r, first))
    sized = [r for r in passed if r.get("size_bytes")]
    if sized:
        out["smallest"] = min(sized, key=lambda r: r["size_bytes"])
    return out
