"""TFLite artifacts converted from the exported SavedModel, run with the LiteRT Interpreter.

Variants: float32, float16 weights, dynamic-range int8 (weights int8, activations float at
run time), full int8 (activations calibrated on a representative sample of training data;
ops without an int8 kernel stay float). A QAT model converts to int8 with its own learned
ranges. ``tflite_fp32`` stores every weight dense; ``tflite_fp32_sparse`` (its own module)
stores pruned ones sparse. The int8 variants stay dense: with LiteRT 2.3 their sparse
FULLY_CONNECTED fails to prepare in XNNPACK, and the file came out larger (measured on a
50%-pruned encoder); the zeros of a pruned int8 model still show in its gzip size.
"""
import os

import numpy as np
import tensorflow as tf

from tfdeploy.export import Artifact, Format, int4_kernels, register
from tfdeploy.export.runtime import register_runtime, starts_with
from tfdeploy.export.tflite_rewrites import (float_islands, int8_grid_weights,
                                              shared_zero_points)
from tfdeploy.rundir import atomic_write_bytes


class TFLiteFormat(Format):
    """A converter variant of the SavedModel, run by the LiteRT Interpreter."""

    runtime, suffix = "litert", ".tflite"

    def write(self, job, path):
        return export(job.savedmodel(), self.name, path)

    def weight_sparsity(self, path):
        return weight_stats(path)["sparsity"]


@register
class Fp32(TFLiteFormat):
    name, is_float, order = "tflite_fp32", True, 10

    def write(self, job, path):
        return job.tflite_fp32()  # written once: the quantizer formats start from it


def quantization_aware_refusal(traits):
    """The converter turns a QAT model's fake-quant ops into int8 kernels whatever the
    variant asks: its fp16 and dynamic-range files are the int8 file again (measured:
    byte-identical for dynamic range), under a name that promises float math."""
    if traits.quantization_aware:
        return ("a quantization-aware model converts to int8 with its learned ranges "
                "whatever this variant asks (the file would be tflite_int8's); export "
                "tflite_int8")
    return None


@register
class Fp16(TFLiteFormat):
    name, order = "tflite_fp16", 11

    def refuses(self, traits):
        return quantization_aware_refusal(traits)

    def dry_run(self, model, recipe):
        return (f"{self.name} (TFLite converter): every weight float16, computed in float32",)


@register
class DynamicInt8(TFLiteFormat):
    name, order = "tflite_dynamic_int8", 12

    def refuses(self, traits):
        return quantization_aware_refusal(traits)

    def dry_run(self, model, recipe):
        return (f"{self.name} (TFLite converter): FULLY_CONNECTED, CONV_2D and GATHER table "
                f"weights int8; activations float, quantized at run time",)


@register
class Int8(TFLiteFormat):
    """Full int8: activation ranges from a QAT model's quantizers, else calibrated on
    training rows (with ``int8_fallback: always``, sensitive ops kept float from the start)."""

    name, order = "tflite_int8", 13

    def dry_run(self, model, recipe):
        ex = recipe.export
        kept = f"; {', '.join(FALLBACK_FLOAT_OPS)} stay float" if ex.int8_fallback == "always" \
            else ""
        granularity = ex.int8_granularity.replace("_", " ")
        return (f"{self.name} (TFLite converter): weights ({granularity}) and activations "
                f"int8, activation ranges calibrated on "
                f"{ex.calibration_examples} training rows (from a QAT model: its learned "
                f"ranges){kept}",)

    def write(self, job, path):
        if job.traits.quantization_aware:
            return export(job.savedmodel(), self.name, path)
        always = job.recipe.export.int8_fallback == "always"
        return export(job.savedmodel(), self.name, path, job.representative(), False,
                      FALLBACK_FLOAT_OPS if always else (), per_tensor(job.recipe))

    def gate_fallback(self, job):
        """After a missed gate (``int8_fallback: on_gate``, calibrated ranges only): the
        file again with the sensitive ops in float, as ``tflite_int8_fallback``."""
        if job.traits.quantization_aware or job.recipe.export.int8_fallback != "on_gate":
            return None
        path = os.path.join(job.folder, f"{job.recipe.name}.tflite_int8_fallback.tflite")
        return Artifact("tflite_int8_fallback", export(
            job.savedmodel(), self.name, path, job.representative(), False,
            FALLBACK_FLOAT_OPS, per_tensor(job.recipe)))


def per_tensor(recipe):
    """Post-training int8 weights with one scale per tensor (``export.int8_granularity``)?"""
    return recipe.export.int8_granularity == "per_tensor"


# Ops kept in float by the full-int8 fallback: LayerNorm (MEAN, SQUARED_DIFFERENCE, RSQRT),
# softmax, residual/elementwise math and attention's activation x activation matmuls.
FALLBACK_FLOAT_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "ADD", "MUL", "SUB",
                      "BATCH_MATMUL")


def convert_with_float_ops(saved_model_dir, representative, float_ops=FALLBACK_FLOAT_OPS,
                           per_tensor=False):
    """Full int8 except ``float_ops``, which stay float (TFLite's quantization debugger)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, ["serving_default"])
    converter._experimental_disable_per_channel = per_tensor  # TF's only switch for it
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options)
    return shared_zero_points(float_islands(debugger.get_nondebug_quantized_model()))


def convert(saved_model_dir, variant, representative=None, sparse=False, per_tensor=False):
    """Bytes of the .tflite flatbuffer for one variant (tflite_int8 without a
    representative dataset: a QAT model, converted with its learned ranges; ``per_tensor``:
    calibrated int8 weights with one scale per tensor)."""
    data = _convert(saved_model_dir, variant, representative, sparse, per_tensor)
    if variant == "tflite_int8" and representative is None:
        data = int8_grid_weights(data)
    if variant == "tflite_int8":
        data = float_islands(data)
    if variant in ("tflite_dynamic_int8", "tflite_int8"):
        data = shared_zero_points(data)
    return data


def _convert(saved_model_dir, variant, representative, sparse, per_tensor=False):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, ["serving_default"])
    optimizations = []
    if variant != "tflite_fp32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse and variant == "tflite_fp32":
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if variant == "tflite_fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "tflite_int8" and representative is not None:
        converter.representative_dataset = representative
        converter._experimental_disable_per_channel = per_tensor
        # int8 kernels where they exist; the rest (e.g. int32 id inputs, gather) stays float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def export(saved_model_dir, variant, path, representative=None, sparse=False, float_ops=(),
           per_tensor=False):
    if float_ops:
        data = convert_with_float_ops(saved_model_dir, representative, float_ops, per_tensor)
    else:
        data = convert(saved_model_dir, variant, representative, sparse, per_tensor)
    atomic_write_bytes(path, data)
    return path


def interpreter(path, threads=2):
    """A LiteRT interpreter of the file at ``path``; int4 weights widened to int8 in memory
    when the file asks for int8 kernels (``export.int4_kernels``)."""
    from ai_edge_litert.interpreter import Interpreter

    if int4_kernels.wants_int8(path):
        with open(path, "rb") as f:
            return Interpreter(model_content=int4_kernels.widen(f.read()), num_threads=threads)
    return Interpreter(model_path=path, num_threads=threads)


def input_specs(path):
    details = interpreter(path, 1).get_signature_runner("serving_default").get_input_details()
    return {name: ([None if d < 0 else int(d) for d in info["shape_signature"]],
                   np.dtype(info["dtype"])) for name, info in details.items()}


def runner(path, threads=2):
    """A callable: dict of numpy inputs -> logits (numpy), resizing to each batch's shape.

    LiteRT's signature runner resizes the inputs and allocates the tensors on every call,
    and allocating prepares every node again (XNNPACK's included): on the Fashion-MNIST
    CNN that was 10-17 us of a 100 us int8 call. This runner does it only when an input's
    shape changes."""
    interp = interpreter(path, threads)
    signature = interp.get_signature_runner("serving_default")
    inputs = [(k, v["index"], v["dtype"]) for k, v in signature.get_input_details().items()]
    names = {k for k, _, _ in inputs}
    logits = signature.get_output_details()["logits"]["index"]
    # the calls the signature runner makes, on the signature's subgraph
    graph, subgraph = interp._interpreter, signature._subgraph_index
    allocated = [None]  # the input shapes the tensors are allocated for

    def run(features):
        if features.keys() != names:
            raise ValueError(f"{path}: inputs {sorted(features)}, the model takes "
                             f"{sorted(names)}")
        arrays = [np.asarray(features[k], dtype) for k, _, dtype in inputs]
        shapes = [a.shape for a in arrays]
        if shapes != allocated[0]:
            allocated[0] = None  # a failed resize must not leave shapes recorded
            for (_, index, _), a in zip(inputs, arrays):
                graph.ResizeInputTensor(index, np.array(a.shape, np.int32), False, subgraph)
            graph.AllocateTensors(subgraph)
            allocated[0] = shapes
        for (_, index, _), a in zip(inputs, arrays):
            graph.SetTensor(index, a, subgraph)
        graph.Invoke(subgraph)
        return graph.GetTensor(logits, subgraph)

    run.interpreter = interp  # it owns the model bytes of a file loaded from memory
    return run


# a TFLite flatbuffer: the file identifier TFL3 at bytes 4-8
register_runtime("litert", lambda path: starts_with(path, 4, b"TFL3"), runner, input_specs)


def weight_stats(path):
    """Sparsity of the matmul/conv weights stored in a .tflite file (what pruning left)."""
    tensors = [value for _, value in weight_tensors(path) if value.ndim >= 2]
    total = sum(v.size for v in tensors)
    zeros = sum(int(np.count_nonzero(v == 0)) for v in tensors)
    return {"matmul_weights": total, "sparsity": zeros / total if total else 0.0}


def weight_tensors(path):
    """[(shape, values)] of the matmul/conv weight constants in a .tflite file."""
    interp = interpreter(path, 1)
    weight_ops = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"}
    out = []
    for op in interp._get_ops_details():  # no public API lists an op's constant inputs
        if op["op_name"] in weight_ops and len(op["inputs"]) > 1:
            try:
                value = interp.get_tensor(int(op["inputs"][1]))
            except ValueError:
                continue
            out.append((tuple(value.shape), value))
    return out
