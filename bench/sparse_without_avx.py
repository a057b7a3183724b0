"""The pruned Fashion-MNIST CNN's sparse TFLite file where XNNPACK runs its sparse kernels:
on this machine's own cores, with AVX hidden from the process.

XNNPACK runs a sparse (NCHW) subgraph only on x86 CPUs without AVX (on AVX CPUs it expects
its dense kernels to be faster), so on an AVX machine ``cnn_latency.py`` finds the sparse
file running the dense kernels. This script starts two worker processes that keep their
interpreters loaded and takes turns between them, a block of calls at a time
(``bench.settled_block``), so machine noise hits both alike:

* **without AVX**: ``bench/hide_avx.c``, compiled here with ``cc`` and preloaded, turns on
  Linux's CPUID faulting and answers every CPUID with the AVX family's bits cleared.
  XNNPACK then picks its SSE kernels, as on a CPU without AVX, and may take its sparse path;
  the code runs natively at full speed (no emulator).
* **as is**: the same files on this CPU with its AVX (-512) kernels.

Each worker also says whether the sparse kernels ran: the pruned weights stored dense and
stored sparse give bit-identical logits only when XNNPACK runs the same dense kernels for
both. Needs ``cc`` and CPUID faulting (``cpuid_fault`` in /proc/cpuinfo); the workers import
no TensorFlow (its binary needs AVX), only LiteRT's interpreter and numpy.

    python bench/sparse_without_avx.py [--runs_dir runs] [--run_name fashion_mnist]
        [--batch_sizes 1,32] [--seconds 5] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ("dense_fp32", "pruned_fp32_dense", "pruned_fp32_sparse")  # in both workers
ROWS = 256  # test images each worker holds: the largest batch
RATIOS = [(("without AVX", "pruned_fp32_sparse"), ("without AVX", "dense_fp32"), "<= 0.6"),
          (("without AVX", "pruned_fp32_sparse"), ("without AVX", "pruned_fp32_dense"),
           "same weights"),
          (("without AVX", "pruned_fp32_sparse"), ("as is", "dense_fp32"),
           "sparse without AVX against dense with it"),
          (("as is", "pruned_fp32_sparse"), ("as is", "dense_fp32"), ""),
          (("as is", "pruned_fp32_sparse"), ("as is", "pruned_fp32_dense"), "same weights")]


def runner(path, threads):
    """Callable: images -> logits, allocating only when the batch size changes."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    signature = interp.get_signature_runner("serving_default")
    image = signature.get_input_details()["image"]["index"]
    logits = signature.get_output_details()["logits"]["index"]
    shape = [None]

    def run(x):
        if x.shape != shape[0]:
            interp.resize_tensor_input(image, list(x.shape))
            interp.allocate_tensors()
            shape[0] = x.shape
        interp.set_tensor(image, x)
        interp.invoke()
        return interp.get_tensor(logits)

    return run


def worker(images_path, threads, labelled_paths):
    """Loads the files, answers one line of facts, then one block of times per request
    line ("label batch") until stdin closes."""
    import tfdeploy  # noqa: F401  (no TensorFlow: tfdeploy.bench needs numpy only)
    from tfdeploy.bench import Settings, settled_block

    images = np.load(images_path)
    runners = {label: runner(path, threads) for label, path in
               (item.split("=", 1) for item in labelled_paths)}
    diff = np.abs(runners["pruned_fp32_sparse"](images) - runners["pruned_fp32_dense"](images))
    print(json.dumps({"avx": cpu_has_avx(), "max_diff": float(diff.max())}), flush=True)
    settings = Settings()
    for line in sys.stdin:
        label, batch = line.split()
        times = settled_block(runners[label], images[:int(batch)], settings)
        print(json.dumps(times), flush=True)


def cpu_has_avx():
    """What this process's CPUID says, read by numpy's own dispatch (None if unknown)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return None
    return bool(__cpu_features__.get("AVX"))


class Worker:
    def __init__(self, name, paths, images_path, threads, preload=None):
        env = dict(os.environ, **({"LD_PRELOAD": preload} if preload else {}))
        args = [sys.executable, os.path.abspath(__file__), "--worker", images_path,
                "--threads", str(threads)] + [f"{k}={v}" for k, v in paths.items()]
        self.name, self.labels = name, list(paths)
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"error: the {name} worker died before it was ready (exit "
                     f"{self.proc.wait()}); without AVX it needs CPUID faulting: "
                     "is `cpuid_fault` in /proc/cpuinfo?")
        self.facts = json.loads(line)

    def block(self, label, batch):
        self.proc.stdin.write(f"{label} {batch}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def compile_shim(folder):
    out = os.path.join(folder, "hide_avx.so")
    source = os.path.join(ROOT, "bench", "hide_avx.c")
    try:
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", out, source], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"error: could not compile {source} with cc: {e}")
    return out


def interleaved(workers, batch, seconds, runs=200):
    """{(worker, label): [seconds per call]}: blocks in turn until each variant has
    ``runs`` calls or ``seconds`` of measured time; the first two blocks each warm up."""
    variants = [(w, label) for w in workers for label in w.labels]
    for w, label in variants * 2:
        w.block(label, batch)
    times = {(w.name, label): [] for w, label in variants}

    def done(key):
        return len(times[key]) >= runs or sum(times[key]) >= seconds

    while not all(map(done, times)):
        for w, label in variants:
            if not done((w.name, label)):
                times[(w.name, label)] += w.block(label, batch)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--run_name", default="fashion_mnist")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip().isdigit()]
    if len(batch_sizes) != len(args.batch_sizes.split(",")) or \
            not all(1 <= b <= ROWS for b in batch_sizes):
        parser.error(f"--batch_sizes: whole numbers from 1 to {ROWS}, got {args.batch_sizes!r}")
    if not args.seconds > 0 or args.threads < 1:
        parser.error("--seconds must be > 0 and --threads >= 1")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from cnn_latency import pick

    import tfdeploy  # noqa: F401
    from tfdeploy.data.fashion_mnist import FashionMNIST

    found = pick(args.runs_dir, args.run_name)
    test = FashionMNIST(FashionMNIST.Config(type="fashion_mnist", channels=3)).load()
    with tempfile.TemporaryDirectory() as tmp:
        images_path = os.path.join(tmp, "images.npy")
        np.save(images_path, np.asarray(test.validation.examples[:ROWS], np.float32) / 255.0)
        shim = compile_shim(tmp)
        paths = {k: found[k]["path"] for k in LABELS}
        workers = [Worker("without AVX", paths, images_path, args.threads, shim),
                   Worker("as is", paths, images_path, args.threads)]
        try:
            report(workers, batch_sizes, args)
        finally:
            for w in workers:
                w.close()


def report(workers, batch_sizes, args):
    for w in workers:
        ran = "no (bit-identical logits: the dense kernels)" if w.facts["max_diff"] == 0 \
            else f"yes (max |logit diff| {w.facts['max_diff']:.2e}: another kernel path)"
        print(f"{w.name:12s} AVX in CPUID: {w.facts['avx']}; sparse kernels ran: {ran}")
    for batch in batch_sizes:
        times = interleaved(workers, batch, args.seconds)
        median = {key: float(np.median(t)) * 1e3 for key, t in times.items()}
        print(f"\nbatch {batch}, {args.threads} threads, one interleaved run, two processes")
        for (name, label), ms in median.items():
            p90 = float(np.percentile(times[(name, label)], 90)) * 1e3
            print(f"  {name:12s} {label:20s} median {ms:8.3f} ms  p90 {p90:8.3f} ms")
        for a, b, note in RATIOS:
            print(f"  {a[1]} ({a[0]}) / {b[1]} ({b[0]}): {median[a] / median[b]:.3f}  {note}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        threads = int(sys.argv[4])
        worker(sys.argv[2], threads, sys.argv[5:])
    else:
        main()
