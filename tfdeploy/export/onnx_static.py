"""`onnx_static_int8`: ONNX Runtime static int8 (QDQ) of the float ONNX file.

Weights int8 per output channel, activations uint8 with ranges calibrated (min/max) on
training rows, written as QuantizeLinear/DequantizeLinear pairs that ORT fuses into int8
kernels (QLinearConv, QLinearMatMul, ...). This is the mode for CNNs, whose convolutions
dynamic quantization leaves in float; ``onnx_int8`` (dynamic) stays the choice for
transformers' matmuls and embeddings. The float file already carries the model plugin's
fusions, so fusion happens before quantization. A quantization-aware model's ONNX graph
already holds QuantizeLinear/DequantizeLinear pairs with the ranges QAT learned (tf2onnx
converts its fake-quant ops), so it is the static int8 file once its conv kernels are
stored int8 and the re-quantizations after each padding and between a conv and its ReLU
dropped (``qdq_weights``: tf2onnx leaves the kernels float, and each pair kept ORT from
fusing); quantizing it again stalled ONNX
Runtime's quantizer (a 20-minute hang on a 0.1 MB CNN).
"""
import contextlib
import logging
import os
import tempfile

import numpy as np

from tfdeploy.export import Format, register
from tfdeploy.rundir import atomic_write_bytes


@register
class OnnxStaticInt8(Format):
    name, runtime, suffix, order = "onnx_static_int8", "onnxruntime", ".onnx", 22
    precisions = ("int8", "float")

    def write(self, job, path):
        if job.traits.quantization_aware:
            import onnx

            from tfdeploy.export import qdq_weights

            graph = onnx.load(job.onnx_fp32())
            qdq_weights.drop_pad_requantize(graph)  # first: convs then read the input's scale
            qdq_weights.drop_requantize_before_activation(graph)
            qdq_weights.int8_conv_weights(graph)
            atomic_write_bytes(path, graph.SerializeToString())
            return path
        return self.write_mixed(job, path, {})

    def layers(self, job):
        if job.traits.quantization_aware:
            return []  # its ranges are the ones QAT learned: nothing to choose
        from tfdeploy.export.onnx import weight_nodes

        return job.once(("onnx_layers", self.name),
                        lambda: weight_nodes(prepared(job), WEIGHT_OPS))

    def write_mixed(self, job, path, kept):
        return quantize_static(prepared(job), path, job.representative(), sorted(kept))

    def mixed_recipe(self, job, kept):
        return {"engine": "onnxruntime.quantization.quantize_static (QDQ, per channel)",
                "nodes_to_exclude": sorted(kept)}

    def dry_run(self, model, recipe):
        return (f"{self.name}: ORT static QDQ: {', '.join(WEIGHT_OPS)} weights int8 per "
                f"channel, activations uint8 calibrated on training rows",)


WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def prepared(job):
    """The float ONNX file after ORT's pre-processing, once per job: batch norms folded
    into convs and shapes inferred, so the quantizer sees the graph ORT will run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def make():
        path = os.path.join(job.folder, ".convert", "onnx_prepared.onnx")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        quant_pre_process(job.onnx_fp32(), path, skip_symbolic_shape=True)
        return path

    return job.once("onnx_prepared", make)


@contextlib.contextmanager
def quiet():
    """ORT's quantizer warns through the root logger for every 1-D weight it leaves per
    tensor (LayerNorm scales): once per layer per call, hundreds of lines in a search."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_static(prepared_path, dst_path, representative, exclude=()):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static as ort_quantize_static)

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(representative())

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {k: np.asarray(v) for k, v in row.items()}

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "static_int8.onnx")
        with quiet():
            ort_quantize_static(prepared_path, out, Rows(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
        with open(out, "rb") as f:
            atomic_write_bytes(dst_path, f.read())
    return dst_path
