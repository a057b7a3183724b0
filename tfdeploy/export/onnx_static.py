"""`onnx_static_int8`: ONNX Runtime static int8 (QDQ) of the float ONNX file.

Weights int8 per output channel, activations uint8 with ranges calibrated (min/max) on
training rows, written as QuantizeLinear/DequantizeLinear pairs that ORT fuses into int8
kernels (QLinearConv, QLinearMatMul, ...). This is the mode for CNNs, whose convolutions
dynamic quantization leaves in float; ``onnx_int8`` (dynamic) stays the choice for
transformers' matmuls and embeddings. The float file already carries the model plugin's
fusions, so fusion happens before quantization. A quantization-aware model's ONNX graph
already holds QuantizeLinear/DequantizeLinear pairs with the ranges QAT learned (tf2onnx
converts its fake-quant ops), so it is the static int8 file as it is; quantizing it again
stalled ONNX Runtime's quantizer (a 20-minute hang on a 0.1 MB CNN).
"""
import os
import tempfile

import numpy as np

from tfdeploy.export import Format, register
from tfdeploy.rundir import atomic_write_bytes


@register
class OnnxStaticInt8(Format):
    name, runtime, suffix, order = "onnx_static_int8", "onnxruntime", ".onnx", 22

    def write(self, job, path):
        if job.traits.quantization_aware:
            with open(job.onnx_fp32(), "rb") as f:
                atomic_write_bytes(path, f.read())
            return path
        return quantize_static(job.onnx_fp32(), path, job.representative())


def quantize_static(src_path, dst_path, representative):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static as ort_quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(representative())

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {k: np.asarray(v) for k, v in row.items()}

    with tempfile.TemporaryDirectory() as tmp:
        out, prepared = os.path.join(tmp, "static_int8.onnx"), os.path.join(tmp, "pre.onnx")
        # ORT's recommended first step: fold batch norms into convs, infer shapes, so that
        # the quantizer sees the graph ORT will run.
        quant_pre_process(src_path, prepared, skip_symbolic_shape=True)
        ort_quantize_static(prepared, out, Rows(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        with open(out, "rb") as f:
            atomic_write_bytes(dst_path, f.read())
    return dst_path
