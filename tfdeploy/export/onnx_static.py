"""`onnx_static_int8`: ONNX Runtime static int8 (QDQ) of the float ONNX file.

Weights int8 per output channel (or per tensor: ``export.int8_granularity``), activations
uint8 with ranges calibrated (min/max) on training rows, written as QuantizeLinear /
DequantizeLinear pairs that ORT fuses into int8 kernels (QLinearConv, QGemm,
MatMulIntegerToFloat, ...). The float file already carries the model plugin's fusions, so
fusion happens before quantization. The scheme depends on the graph (:func:`scheme_for`):

* a CNN: every op ORT can quantize, each output re-quantized for the next int8 op (ORT
  fuses conv + ReLU + quantize into QLinearConv);
* a graph with LayerNormalization (a transformer): only the weight ops (MatMul, Gemm, the
  embedding Gather), their outputs left float. The residual stream LayerNorm reads has a
  few channels far wider than the rest, which uint8 cannot hold: on the fine-tuned MiniLM,
  quantizing every op agreed with the float file on 96.7% of 1,500 training rows, this
  scheme on 99.8%. ORT has no static form of its fused ``Attention`` op, and left float
  it kept the file at 0.58x ORT fp32's latency; it becomes ``QAttention``, whose input is
  quantized at run time (0.43x).

A quantization-aware model's ONNX graph already holds QuantizeLinear/DequantizeLinear
pairs with the ranges QAT learned (tf2onnx converts its fake-quant ops), so it is the
static int8 file once its conv kernels are stored int8 and the re-quantizations after
each padding and between a conv and its ReLU dropped (``qdq_weights``: tf2onnx leaves the
kernels float, and each pair kept ORT from fusing); quantizing it again stalled ONNX
Runtime's quantizer (a 20-minute hang on a 0.1 MB CNN).
"""
import contextlib
import dataclasses
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
            qdq_weights.int8_kernels(graph)
            qdq_weights.int8_tables(graph)
            atomic_write_bytes(path, graph.SerializeToString())
            return path
        return self.write_mixed(job, path, {})

    def layers(self, job):
        if job.traits.quantization_aware:
            return []  # its ranges are the ones QAT learned: nothing to choose
        from tfdeploy.export.onnx import weight_nodes

        return job.once(("onnx_layers", self.name), lambda: weight_nodes(
            prepared(job), job_scheme(job).weight_ops))

    def write_mixed(self, job, path, kept):
        return quantize_static(prepared(job), path, job.representative(), job_scheme(job),
                               sorted(kept), per_channel(job.recipe))

    def mixed_recipe(self, job, kept):
        scheme = job_scheme(job)
        granularity = job.recipe.export.int8_granularity.replace("_", " ")
        return {"engine": f"onnxruntime.quantization.quantize_static (QDQ, {granularity})",
                "op_types_to_quantize": list(scheme.static_ops or ["all"]),
                "float_outputs": list(scheme.float_outputs),
                "dynamic": list(scheme.dynamic_ops), "nodes_to_exclude": sorted(kept)}

    def dry_run(self, model, recipe):
        granularity = recipe.export.int8_granularity.replace("_", " ")
        return (f"{self.name}: ORT static QDQ, weights int8 {granularity}, activations uint8 "
                f"calibrated on training rows: a CNN's every op ORT can quantize; with "
                f"LayerNormalization only {', '.join(TRANSFORMER.static_ops)} (outputs "
                f"float) and Attention as QAttention",)


WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class Scheme:
    """What ORT quantizes in one float graph."""
    static_ops: tuple = None     # op types with calibrated int8 inputs; None: all ORT can
    float_outputs: tuple = ()    # op types whose outputs are not quantized again
    dynamic_ops: tuple = ()      # op types whose inputs are quantized at run time
    weight_ops: tuple = WEIGHT_OPS  # the nodes an accuracy search can keep float


CNN = Scheme()
TRANSFORMER = Scheme(static_ops=("MatMul", "Gemm", "Gather"), float_outputs=("MatMul", "Gemm"),
                     dynamic_ops=("Attention",),
                     weight_ops=WEIGHT_OPS + ("Gather", "Attention"))


def scheme_for(path):
    """TRANSFORMER for a graph with LayerNormalization (see the module's docstring)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return TRANSFORMER if any(n.op_type == "LayerNormalization" for n in graph.node) else CNN


def job_scheme(job):
    """The scheme of the job's prepared graph, read once per job (a search writes the
    file many times; the graph is the size of the float model)."""
    return job.once("onnx_static_scheme", lambda: scheme_for(prepared(job)))


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


def per_channel(recipe):
    return recipe.export.int8_granularity == "per_channel"


def quantize_static(prepared_path, dst_path, representative, scheme=CNN, exclude=(),
                    per_channel=True):
    """Static int8 of ``prepared_path`` by ``scheme``; the nodes in ``exclude`` stay
    float; weights with a scale per output channel or per tensor."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic,
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
            ort_quantize_static(
                prepared_path, out, Rows(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(scheme.static_ops) if scheme.static_ops else None,
                nodes_to_exclude=list(exclude),
                extra_options={"OpTypesToExcludeOutputQuantization":
                               list(scheme.float_outputs)})
            if scheme.dynamic_ops:
                static, out = out, os.path.join(tmp, "static_dynamic_int8.onnx")
                quantize_dynamic(static, out, weight_type=QuantType.QInt8, per_channel=False,
                                 op_types_to_quantize=list(scheme.dynamic_ops),
                                 nodes_to_exclude=list(exclude))
        with open(out, "rb") as f:
            atomic_write_bytes(dst_path, f.read())
    return dst_path
