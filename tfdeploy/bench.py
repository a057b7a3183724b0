"""Latency of exported artifacts, each in its own runtime, measured side by side.

Variants run round-robin so machine noise hits all alike: warm-up until every variant has
>= ``warmup_runs`` calls and >= ``warmup_seconds``, then rounds until every variant has
>= ``runs`` calls or >= ``seconds`` of measured time. In each round a variant makes
``settle`` seconds of calls and the last ``block`` are recorded. Right after a
switch the previous runtime still slows whatever runs next (its worker threads keep
spinning: TF, XNNPACK and ONNX Runtime all spin), a cost no deployed model sees. Measured
here: a TFLite model timed right after ONNX Runtime int8 ran 1.16-1.20x slower than the same
model timed after another TFLite model; the gap closed after 0.2-1 s.
Reports median and p90 per variant and batch size, and ratios to a reference variant.

    python -m tfdeploy.bench ARTIFACT [ARTIFACT ...] [--batch_sizes 1,8] [--seq_length 128]
"""
import collections
import dataclasses
import gzip
import os
import sys
import time

import numpy as np

from tfdeploy import progress


@dataclasses.dataclass
class Settings:
    batch_sizes: tuple = (1, 8)
    seq_length: int = 128
    threads: int = 2
    warmup_runs: int = 10
    warmup_seconds: float = 0.5
    runs: int = 200
    seconds: float = 10.0
    block: int = 5
    settle: float = 0.3


def signature_inputs(artifact):
    """``make_inputs(batch, seq)`` from the artifact's own input signature: each unknown
    dimension is the batch (first) or ``seq``; integers are 1 (a valid id, mask or type
    for any vocabulary), floats uniform in [0, 1). A recipe's benchmark uses its model
    plugin's inputs instead."""
    from tfdeploy.export import input_specs

    specs = input_specs(artifact.path)

    def make(batch, seq, seed=0):
        rng, out = np.random.default_rng(seed), {}
        for name, (shape, dtype) in specs.items():
            dims = [batch if i == 0 and d is None else seq if d is None else d
                    for i, d in enumerate(shape)]
            out[name] = np.ones(dims, dtype) if np.issubdtype(dtype, np.integer) else \
                rng.random(dims).astype(dtype)
        return out

    return make


def measure(runners, inputs, s: Settings, bar=None):
    """{name: {median_ms, p90_ms, runs}} for callables run round-robin on ``inputs``."""
    names = list(runners)
    spent = dict.fromkeys(names, 0.0)
    calls = dict.fromkeys(names, 0)
    while min(calls.values()) < s.warmup_runs or min(spent.values()) < s.warmup_seconds:
        for name in names:
            start = time.perf_counter()
            runners[name](inputs)
            spent[name] += time.perf_counter() - start
            calls[name] += 1
    times = {name: [] for name in names}

    def share(name):  # of its measurement: runs or seconds, whichever ends it first
        return min(1.0, max(len(times[name]) / s.runs, sum(times[name]) / s.seconds))

    while min(map(share, names)) < 1.0:
        for name in names:
            if share(name) < 1.0:
                times[name] += settled_block(runners[name], inputs, s)
        if bar is not None:  # in runs (a variant ended by seconds counts as all its runs)
            bar.update(int(s.runs * sum(map(share, names))) - bar.done)
    return {name: {"median_ms": float(np.median(t) * 1e3),
                   "p90_ms": float(np.percentile(t, 90) * 1e3), "runs": len(t)}
            for name, t in times.items()}


def settled_block(run, inputs, s: Settings):
    """The last ``s.block`` of ``s.settle`` seconds of calls, every call made and timed
    by the same code: calls timed by other code than the settling ones ran slower for the
    first few (a 0.07 ms model: 92, 83, 78 us, then 73 us as in the settling calls), a
    cost of the switch in this loop, not of the model."""
    recent = collections.deque(maxlen=s.block)
    settled = time.perf_counter() + s.settle
    run(inputs)  # at least one unrecorded call after the switch
    while True:
        start = time.perf_counter()
        run(inputs)
        end = time.perf_counter()
        recent.append(end - start)
        if end >= settled and len(recent) == s.block:
            return list(recent)


def gzip_size(path):
    """Bytes after gzip (level 6): what a pruned or clustered model saves in transfer."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] \
        if os.path.isdir(path) else [path]
    total = 0
    for f in sorted(files):
        with open(f, "rb") as fh:
            total += len(gzip.compress(fh.read(), compresslevel=6))
    return total


def benchmark(artifacts, s: Settings, reference="savedmodel", make_inputs=None):
    """Latency records per artifact and batch size; ratios to ``reference`` (if present).
    ``make_inputs(batch, seq)``: by default from the first artifact's input signature."""
    make_inputs = make_inputs or signature_inputs(artifacts[0])
    runners = {a.name: a.runner(s.threads) for a in artifacts}
    results = {}
    for batch in s.batch_sizes:
        inputs = make_inputs(batch, s.seq_length)
        with progress.counted(f"benchmark batch {batch} ({len(runners)} variants)",
                              s.runs * len(runners), unit="run") as bar:
            stats = measure(runners, inputs, s, bar)
        base = stats.get(reference) or stats[artifacts[0].name]
        for name, st in stats.items():
            st["ratio"] = st["median_ms"] / base["median_ms"]
            results.setdefault(name, {})[f"batch_{batch}"] = st
    return results


def over_lengths(artifacts, s: Settings, shares, reference="savedmodel", make_inputs=None):
    """``benchmark`` at each padded length of ``shares`` ({length: share of the rows}, e.g.
    a dataset's rows by bucket): ({length: results}, mix). In ``mix`` each artifact's
    median and p90 per batch size are the lengths' weighted by their shares: the expected
    latency of a batch drawn from that data (a batch holds rows of one padded length, as
    the evaluator and the server batch them)."""
    by_length = {length: benchmark(artifacts, dataclasses.replace(s, seq_length=length),
                                   reference, make_inputs)
                 for length in sorted(shares)}
    mix = {}
    for name, first in by_length[min(shares)].items():
        for key in first:
            mix.setdefault(name, {})[key] = {stat: sum(
                share * by_length[length][name][key][stat] for length, share in shares.items())
                for stat in ("median_ms", "p90_ms")}
    base = mix.get(reference) or mix[artifacts[0].name]
    for by_batch in mix.values():
        for key, st in by_batch.items():
            st["ratio"] = st["median_ms"] / base[key]["median_ms"]
    return by_length, mix


def main(argv=None):
    import argparse

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)

    parser = argparse.ArgumentParser(prog="python -m tfdeploy.bench",
                                     description="Latency of exported artifacts.")
    parser.add_argument("artifacts", nargs="+", help="SavedModel dirs, .tflite, .onnx files")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--block", type=int, default=5,
                        help="recorded consecutive calls per variant per round")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds of unrecorded calls after each switch of variant")
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfdeploy.export import Artifact

    artifacts = []
    for path in args.artifacts:
        if not os.path.exists(path):
            print(f"error: {path}: no such file or directory", file=sys.stderr)
            return 2
        name = os.path.basename(path.rstrip("/"))
        artifacts.append(Artifact(name if not os.path.isdir(path) else "savedmodel", path))
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        print(f"error: --batch_sizes {args.batch_sizes!r}: expected integers like 1,8",
              file=sys.stderr)
        return 2
    for flag in ("threads", "runs", "seconds", "block", "seq_length"):
        if getattr(args, flag) <= 0:
            print(f"error: --{flag} {getattr(args, flag)}: must be positive", file=sys.stderr)
            return 2
    if min(sizes, default=0) <= 0:
        print(f"error: --batch_sizes {args.batch_sizes!r}: must be positive", file=sys.stderr)
        return 2
    s = Settings(batch_sizes=tuple(sizes), seq_length=args.seq_length, threads=args.threads,
                 runs=args.runs, seconds=args.seconds, block=args.block,
                 settle=args.settle)
    results = benchmark(artifacts, s, reference=artifacts[0].name)
    print(f"seq {s.seq_length}, {s.threads} threads, ratios to {artifacts[0].name}")
    print(f"{'artifact':40s} {'batch':>5s} {'median ms':>10s} {'p90 ms':>9s} {'ratio':>6s} "
          f"{'MB':>7s} {'gzip MB':>8s}")
    for a in artifacts:
        for key, st in results[a.name].items():
            print(f"{a.name:40s} {key[6:]:>5s} {st['median_ms']:10.2f} {st['p90_ms']:9.2f} "
                  f"{st['ratio']:6.2f} {a.size() / 1e6:7.1f} {gzip_size(a.path) / 1e6:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
