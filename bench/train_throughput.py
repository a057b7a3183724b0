"""Training throughput: the `train` stage vs a hand-written ``model.fit``, measured in one run.

Same model (MiniLM-L6 from recipes/bert.yaml), same per-step batches, same optimizer; the
variants run round-robin so machine noise hits all alike. Also shown: a hand-written fit
that pads every batch to max_length (what bucketing saves), and the input pipeline alone
against the model step (the pipeline must not be the bottleneck).

    python bench/train_throughput.py [--steps 24] [--warmup 4] [--rounds 2] [--layers 6]
"""
import argparse
import os
import sys
import time

import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from tfdeploy import pipeline, training
from tfdeploy.recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def rate(clock, warmup, batch):
    times = clock.times[warmup:]
    return (len(times) - 1) * batch / (times[-1] - times[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    recipe = load_recipe(os.path.join(ROOT, "recipes", "bert.yaml"), [
        f"model.layers={list(range(args.layers))}", "output.tensorboard=false"])
    context, _ = pipeline.prepare(recipe, pipeline.Options())
    cfg = recipe.stages[0]
    cfg = training.FitConfig(**{f: getattr(cfg, f) for f in training.FitConfig.__dataclass_fields__})
    cfg.steps, cfg.evals, cfg.keep_best = args.steps, 1, False
    batch = context.global_batch(cfg.batch_size)
    steps = args.steps
    max_length = recipe.data.max_length
    import tempfile
    context.run_dir = context.stage_dir = tempfile.mkdtemp()

    def fresh():
        keras.utils.set_random_seed(0)
        with context.strategy.scope():
            return context.plugin.build()

    def ours():
        clock = StepClock()
        training.fit(fresh(), context, cfg, callbacks=[clock])
        return rate(clock, args.warmup, batch)

    def hand_written(padded=False):
        model = fresh()
        optimizer = training.make_optimizer(cfg, steps)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        if padded:  # the usual hand-written pipeline: every batch padded to max_length
            enc = context.train
            ids = tf.ragged.stack([tf.constant(enc.ids(i)) for i in range(steps * batch)])
            ds = tf.data.Dataset.from_tensor_slices(
                (ids.to_tensor(shape=[None, max_length]), enc.labels[:steps * batch]))
            ds = ds.batch(batch).map(lambda x, y: (context.plugin.features(x), y)).repeat()
        else:
            ds = context.train_dataset(cfg.batch_size)
        clock = StepClock()
        model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[clock], verbose=0)
        return rate(clock, args.warmup, batch)

    def pipeline_alone():
        it = iter(context.train_dataset(cfg.batch_size))
        for _ in range(args.warmup):
            next(it)
        start = time.perf_counter()
        n = steps * 4
        for _ in range(n):
            next(it)
        return n * batch / (time.perf_counter() - start)

    variants = {"train stage": ours, "hand-written fit (same batches)": hand_written,
                "hand-written fit (padded to max_length)": lambda: hand_written(True),
                "input pipeline alone": pipeline_alone}
    results = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            results[name].append(fn())
            print(f"round {r + 1}: {name}: {results[name][-1]:.1f} samples/s", flush=True)
    best = {name: max(vals) for name, vals in results.items()}
    print(f"\nMiniLM-L6 ({args.layers} layers), global batch {batch}, {steps} steps "
          f"({args.warmup} warm-up), best of {args.rounds} rounds, interleaved:")
    for name, value in best.items():
        print(f"  {name:42s} {value:8.1f} samples/s")
    ratio = best["train stage"] / best["hand-written fit (same batches)"]
    print(f"ratio train stage / hand-written fit: {ratio:.3f} (target >= 0.95)")
    print(f"ratio train stage / padded hand-written fit: "
          f"{best['train stage'] / best['hand-written fit (padded to max_length)']:.2f}")
    print(f"ratio input pipeline / model step: "
          f"{best['input pipeline alone'] / best['train stage']:.0f}x faster than the model")
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
