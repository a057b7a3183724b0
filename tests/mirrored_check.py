"""Run stages under MirroredStrategy over N logical CPUs (own process: the CPU split must
happen before TensorFlow starts). Prints one JSON line with what the test asserts on.

    python tests/mirrored_check.py CHECKPOINT_DIR OUT_DIR
"""
import json
import os
import sys

import tfdeploy  # noqa: F401
import numpy as np

from tfdeploy import pipeline
from tfdeploy.export import savedmodel, tflite
from tfdeploy.recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replicas_equal(model):
    """Every mirrored variable holds the same value on each replica."""
    worst = 0.0
    for var in model.weights:
        values = [v.numpy() for v in getattr(var, "values", [var])]
        for other in values[1:]:
            worst = max(worst, float(np.max(np.abs(other - values[0]))) if other.size else 0.0)
    return worst


CHAINS = [
    "[{type: train, steps: 6, batch_size: 8},"
    " {type: prune, steps: 8, frequency: 2, final_sparsity: 0.5, min_weights: 0,"
    "  exclude: [classifier], batch_size: 8},"
    " {type: qat, steps: 4, batch_size: 8}]",
    "[{type: cluster, number_of_clusters: 8, steps: 4, batch_size: 8, min_weights: 0,"
    "  include: [layer_0_intermediate]},"
    " {type: distill, student_layers: [1], steps: 4, batch_size: 8}]",
    "[{type: prune, name: prune_gradient, criterion: gradient, steps: 8, frequency: 2,"
    "  final_sparsity: 0.5, min_weights: 0, exclude: [classifier], batch_size: 8}]",
]


def main(checkpoint, out):
    result = {"stages": {}}
    for stages in CHAINS:
        run_chain(checkpoint, out, stages, result)
    print("RESULT " + json.dumps(result, default=str))


def run_chain(checkpoint, out, stages, result):
    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny.yaml"), [
        f"model.checkpoint={checkpoint}", "model.layers=null", "data.max_train_examples=256",
        "evaluate.max_examples=128", "output.tensorboard=false", "distribution.strategy=mirrored",
        "distribution.logical_cpus=2", f"stages={stages}"])
    context, chain = pipeline.prepare(recipe, pipeline.Options())
    context.run_dir = context.stage_dir = out
    with context.strategy.scope():
        model = context.plugin.build()
    result["replicas"] = context.replicas
    for cfg, stage in chain:
        stage_result = stage.run(model, context)
        model, context.traits = stage_result.model, stage_result.traits
        entry = {"replica_max_diff": replicas_equal(model), "report": stage_result.report}
        if cfg.type == "qat":
            path = savedmodel.export(model, context.plugin.input_specs(), ["n", "p"],
                                     os.path.join(out, "sm"), "qat")
            flat = os.path.join(out, "qat.tflite")
            tflite.export(path, "tflite_int8", flat)
            interp = tflite.interpreter(flat)
            details = {t["index"]: t for t in interp.get_tensor_details()}
            weights = [details[op["inputs"][1]] for op in interp._get_ops_details()
                       if op["op_name"] == "FULLY_CONNECTED"]
            # every matmul weight int8 (V's as a hybrid FC, see export/tflite.py)
            entry["int8_fc"] = bool(weights) and all(w["dtype"] == np.int8 for w in weights)
            _, batch = next(context.validation.numpy_batches(4))
            entry["tflite_runs"] = bool(np.isfinite(tflite.runner(flat)(batch)).all())
        result["stages"][cfg.name] = entry


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
