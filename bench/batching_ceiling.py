"""How far dynamic batching could raise serving throughput, from the model alone (#15).

Times a row at batch 1 and a row of a full batch in-process, on the newest finished
recipes/bert.yaml run's artifacts, side by side in one interleaved run, at the lengths
SST-2 dev is padded to (weighted by their shares). A server whose model ran full batches
all the time would serve N / (batch-N seconds) requests a second, and no more: padding
rows to the longest in a batch and the server's own work only lower it. Its batching
ratio can then be no higher than that ceiling over its throughput without batching; pass
that throughput (``bench/serve_load.py``'s batching=off line) as ``--no_batching_rps``.

    python bench/batching_ceiling.py [--runs_dir runs] [--artifacts tflite_int8]
        [--batch_sizes 1,32] [--seq_length dev|N] [--seconds 10] [--no_batching_rps R]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_latency import arguments, measure, newest_run  # noqa: E402


def main():
    args = arguments(__doc__, batch_sizes="1,32", tokens="dev", artifacts="tflite_int8",
                     more=[("--no_batching_rps", float, None)])
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if len(sizes) != 2 or sizes[0] != 1 or sizes[1] < 2:
        sys.exit(f"error: --batch_sizes: 1 and a full batch, e.g. 1,32; got {args.batch_sizes!r}")
    if args.no_batching_rps is not None and not args.no_batching_rps > 0:
        sys.exit(f"error: --no_batching_rps: requests a second, > 0; got {args.no_batching_rps}")

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
    from tfdeploy.export import Artifact

    wanted = [a.strip() for a in args.artifacts.split(",") if a.strip()]
    run_dir, paths = newest_run(args.runs_dir, "bert", wanted)
    artifacts = [Artifact(name, path) for name, path in paths.items()]
    results, where = measure(artifacts, args, run_dir)
    print(f"\n{where}, 2 threads, per row")
    for name, by_batch in results.items():
        one, full = (by_batch[f"batch_{n}"]["median_ms"] / n for n in sizes)
        ceiling = 1e3 / full
        print(f"  {name:22s} batch 1 {one:6.2f} ms, batch {sizes[1]} {full:6.2f} ms a row "
              f"({one / full:.2f}x): at most {ceiling:.0f} requests/s with full batches")
        if args.no_batching_rps:
            print(f"  {'':22s} over {args.no_batching_rps:.0f} requests/s without batching: "
                  f"a batching ratio of at most {ceiling / args.no_batching_rps:.2f}x")


if __name__ == "__main__":
    main()
