"""Why the pruned CNN's sparse file, where XNNPACK runs its sparse kernels, is sometimes
slow at batch 1 with 2 threads (#16).

One process with AVX hidden (``bench/hide_avx.c``, as in ``sparse_without_avx.py``) takes
short windows of calls in turn: the sparse file with 2 threads, the dense fp32 file with 2
threads, the sparse file with 1 thread. A window is slow when the 2-thread sparse call
saves less than 20% over the 1-thread one, i.e. the second thread hardly helped. Prints
how many windows were slow and the medians of fast and slow windows apart.

    python bench/sparse_windows.py [--runs_dir runs] [--run_name fashion_mnist]
        [--windows 60] [--seconds 0.2]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse_without_avx import ROOT, compile_shim, runner  # noqa: E402

SLOW = 0.8  # 2-thread / 1-thread sparse time above this: the second thread hardly helped


def window_median(run, image, seconds):
    """Median seconds a call over the last two thirds of a window of calls."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times[len(times) // 3:]))


def worker(images_path, dense, sparse, windows, seconds):
    image = np.load(images_path)[:1]
    calls = [runner(sparse, 2), runner(dense, 2), runner(sparse, 1)]
    for run in calls:
        run(image)
    rows = np.array([[window_median(run, image, seconds) for run in calls]
                     for _ in range(windows)]) * 1e3
    slow = rows[:, 0] > SLOW * rows[:, 2]
    print(f"{windows} windows of {seconds} s, batch 1; slow (2-thread sparse > {SLOW} x "
          f"1-thread sparse): {int(slow.sum())}")
    for name, chosen in (("fast", ~slow), ("slow", slow)):
        if chosen.any():
            s2, d2, s1 = np.median(rows[chosen], axis=0)
            print(f"  {name}: sparse 2 threads {s2:.3f} ms, dense 2 threads {d2:.3f} ms, "
                  f"sparse 1 thread {s1:.3f} ms; sparse / dense at 2 threads {s2 / d2:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--run_name", default="fashion_mnist")
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()
    if args.windows < 1 or not args.seconds > 0:
        parser.error("--windows must be >= 1 and --seconds > 0")
    from cnn_latency import pick

    import tfdeploy  # noqa: F401
    from tfdeploy.data.fashion_mnist import FashionMNIST

    found = pick(args.runs_dir, args.run_name)
    test = FashionMNIST(FashionMNIST.Config(type="fashion_mnist", channels=3)).load()
    with tempfile.TemporaryDirectory() as tmp:
        images_path = os.path.join(tmp, "images.npy")
        np.save(images_path, np.asarray(test.validation.examples[:1], np.float32) / 255.0)
        env = dict(os.environ, LD_PRELOAD=compile_shim(tmp))
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", images_path,
             found["dense_fp32"]["path"], found["pruned_fp32_sparse"]["path"],
             str(args.windows), str(args.seconds)], env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"error: the worker without AVX failed (exit {done.returncode}); it needs "
                 "CPUID faulting: is `cpuid_fault` in /proc/cpuinfo?")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, dense, sparse, windows, seconds = sys.argv[2:7]
        worker(path, dense, sparse, int(windows), float(seconds))
    else:
        main()
