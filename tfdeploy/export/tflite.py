"""TFLite artifacts converted from the exported SavedModel, run with the LiteRT Interpreter.

Variants: float32, float16 weights, dynamic-range int8 (weights int8, activations float at
run time), full int8 (activations calibrated on a representative sample of training data;
ops without an int8 kernel stay float). A QAT model converts to int8 with its own learned
ranges. ``sparse`` adds EXPERIMENTAL_SPARSITY so pruned weights are stored compressed.
"""

import numpy as np
import tensorflow as tf

from tfdeploy.rundir import atomic_write_bytes

VARIANTS = ("tflite_fp32", "tflite_fp16", "tflite_dynamic_int8", "tflite_int8")


def convert(saved_model_dir, variant, representative=None, sparse=False):
    """Bytes of the .tflite flatbuffer for one variant."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, ["serving_default"])
    optimizations = []
    if variant != "tflite_fp32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if variant == "tflite_fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "tflite_int8":
        if representative is None:
            raise ValueError("full int8 needs a representative dataset")
        converter.representative_dataset = representative
        # int8 kernels where they exist; the rest (e.g. int32 id inputs, gather) stays float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def export(saved_model_dir, variant, path, representative=None, sparse=False):
    atomic_write_bytes(path, convert(saved_model_dir, variant, representative, sparse))
    return path


def interpreter(path, threads=2):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path, num_threads=threads)


def runner(path, threads=2):
    """A callable: dict of numpy inputs -> logits (numpy), resizing to each batch's shape."""
    runner = interpreter(path, threads).get_signature_runner("serving_default")

    def run(features):
        return runner(**{k: np.asarray(v, np.int32) for k, v in features.items()})["logits"]

    return run



def representative_dataset(split, count=100, seed=0):
    """Calibration samples (one example per step) drawn from the training split.

    Each is padded to the longest bucket: the calibrator cannot resize between samples
    of different lengths, and padding is masked out anyway."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split), size=min(count, len(split)), replace=False)
    length = split.boundaries[-1]

    def gen():
        for i in picks:
            ids = np.zeros((1, length), np.int32)
            seq = split.ids(i)
            ids[0, :len(seq)] = seq
            yield {k: np.asarray(v) for k, v in split.plugin.features(ids).items()}

    return gen


def weight_stats(path):
    """Parameter count and sparsity of the constant tensors of a .tflite file."""
    interp = interpreter(path, 1)
    total = zeros = 0
    for detail in interp.get_tensor_details():
        try:
            value = interp.get_tensor(detail["index"])
        except ValueError:
            continue
        if value.ndim >= 2 and value.size >= 256:  # weight matrices, not activations/biases
            total += value.size
            zeros += int(np.count_nonzero(value == 0))
    return {"weights": total, "sparsity": zeros / total if total else 0.0}


