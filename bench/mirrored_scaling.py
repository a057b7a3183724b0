"""MirroredStrategy scaling: train-stage throughput per replica count, measured in one run.

On a CPU-only machine the replicas are logical CPU devices (``distribution.logical_cpus``)
sharing the same cores, so this shows the strategy's overhead rather than a speed-up; on a
GPU machine pass ``--devices gpu`` to scale over 1..N GPUs. Each replica count runs in its
own process (the CPU split must precede TensorFlow's start), round-robin over ``--rounds``.

    python bench/mirrored_scaling.py [--replicas 1,2] [--steps 20] [--per_replica_batch 16]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, os, sys, time, tempfile
import tfdeploy
import tf_keras as keras
from tfdeploy import pipeline, training
from tfdeploy.recipe import load_recipe
replicas, steps, batch, devices, layers = (int(sys.argv[1]), int(sys.argv[2]),
                                           int(sys.argv[3]), sys.argv[4], sys.argv[5])
overrides = ["output.tensorboard=false", "data.max_train_examples=4096",
             "evaluate.max_examples=64", f"model.layers={layers}"]
if devices == "gpu":
    overrides += ["distribution.strategy=mirrored",
                  f"distribution.devices={[f'/gpu:{i}' for i in range(replicas)]}"]
else:
    overrides += ["distribution.strategy=mirrored", f"distribution.logical_cpus={replicas}"]
recipe = load_recipe(os.path.join(sys.argv[6], "recipes", "bert.yaml"), overrides)
context, _ = pipeline.prepare(recipe, pipeline.Options())
context.run_dir = context.stage_dir = tempfile.mkdtemp()
cfg = training.FitConfig(steps=steps, batch_size=batch, evals=1, keep_best=False)
times = []
class Clock(keras.callbacks.Callback):
    def on_train_batch_end(self, b, logs=None):
        times.append(time.perf_counter())
with context.strategy.scope():
    model = context.plugin.build()
training.fit(model, context, cfg, callbacks=[Clock()])
warm = steps // 4
rate = (len(times) - warm - 1) * batch * replicas / (times[-1] - times[warm])
print("RESULT " + json.dumps({"replicas": context.replicas, "samples_per_s": rate}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per_replica_batch", type=int, default=16)
    parser.add_argument("--devices", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--layers", default="[0, 1]", help="MiniLM layers to keep")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    results = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            proc = subprocess.run([sys.executable, "-c", WORKER, str(n), str(args.steps),
                                   str(args.per_replica_batch), args.devices, args.layers,
                                   ROOT], capture_output=True, text=True, cwd=ROOT)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            results[n].append(json.loads(lines[-1][7:])["samples_per_s"])
            print(f"{n} replica(s): {results[n][-1]:.1f} samples/s", flush=True)
    base = max(results[counts[0]])
    print(f"\nMirroredStrategy over {args.devices} devices, per-replica batch "
          f"{args.per_replica_batch}, best of {args.rounds}:")
    for n in counts:
        best = max(results[n])
        print(f"  {n} replica(s): {best:8.1f} samples/s  {best / n:7.1f} per replica  "
              f"scaling {best / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
