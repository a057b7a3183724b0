"""`tflite_fp32_sparse`: float32 TFLite with pruned weights stored sparse, for XNNPACK's
sparse inference.

The converter (``EXPERIMENTAL_SPARSITY``) stores each pruned weight sparse behind a DENSIFY
op; XNNPACK takes those weights as static and, when its rules hold (a 3x3 stride-2 stem on
3 channels, 1x1 convs with at least 2/3 zeros, depthwise convs with padding 1 on each side,
a MEAN at the end), runs that part of the graph in NCHW with sparse kernels. One rule the
converter breaks: it folds ``ZeroPadding2D(1)`` + a stride-1 ``valid`` depthwise conv into
one SAME-padded op, and XNNPACK refuses TF's SAME padding inside the sparse subgraph. The
file is rewritten back to PAD + VALID (same arithmetic); XNNPACK then fuses the PAD into the
conv as explicit padding. Whether the sparse kernels ran is measured, not assumed:
``bench/cnn_latency.py`` times this file against ``tflite_fp32`` (the same weights stored
dense) in one interleaved run.
"""
import numpy as np

from tfdeploy.export import register
from tfdeploy.export.tflite import TFLiteFormat, convert
from tfdeploy.rundir import atomic_write_bytes


@register
class Fp32Sparse(TFLiteFormat):
    name, is_float, order = "tflite_fp32_sparse", True, 10.5
    def weight_sparsity(self, path):
        return stored_sparsity(path)

    def write(self, job, path):
        data = convert(job.savedmodel(), "tflite_fp32", sparse=True)
        atomic_write_bytes(path, explicit_padding(data))
        return path


def stored_sparsity(path):
    """Zeros among the float weight matrices (2-D and up) of a .tflite file, counting a
    sparse-stored tensor's missing values as zeros (its buffer holds the kept values)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    with open(path, "rb") as f:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    zeros = total = 0
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.FLOAT32 or data is None or len(data) == 0 \
                    or tensor.shape is None or len(tensor.shape) < 2:
                continue
            values = np.frombuffer(bytes(data), np.float32)
            size = int(np.prod(tensor.shape))
            total += size
            zeros += size - int(np.count_nonzero(values))  # absent values are zeros
    return zeros / total if total else 0.0


def explicit_padding(data):
    """Each stride-1 SAME DEPTHWISE_CONV_2D with an odd kernel becomes PAD -> VALID conv."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    depthwise = schema.BuiltinOperator.DEPTHWISE_CONV_2D
    pad_code = _opcode(model, schema.BuiltinOperator.PAD)
    for graph in model.subgraphs:
        rewritten = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            options = op.builtinOptions
            if max(code.builtinCode, code.deprecatedBuiltinCode) != depthwise or \
                    options.padding != schema.Padding.SAME or \
                    (options.strideH, options.strideW) != (1, 1):
                rewritten.append(op)
                continue
            _, kh, kw, _ = graph.tensors[op.inputs[1]].shape
            if kh % 2 == 0 or kw % 2 == 0:
                rewritten.append(op)
                continue
            padded = _padded_copy(model, graph, op.inputs[0], kh // 2, kw // 2)
            pad = schema.OperatorT()
            pad.opcodeIndex, pad.inputs, pad.outputs = pad_code, [op.inputs[0], padded[1]], \
                [padded[0]]
            pad.builtinOptionsType = schema.BuiltinOptions.PadOptions
            pad.builtinOptions = schema.PadOptionsT()
            op.inputs = [padded[0]] + list(op.inputs[1:])
            options.padding = schema.Padding.VALID
            rewritten += [pad, op]
        graph.operators = rewritten
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _opcode(model, code):
    from tensorflow.lite.python import schema_py_generated as schema

    for i, c in enumerate(model.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
            return i
    new = schema.OperatorCodeT()
    new.builtinCode, new.deprecatedBuiltinCode, new.version = code, code, 1
    model.operatorCodes.append(new)
    return len(model.operatorCodes) - 1


def _padded_copy(model, graph, index, ph, pw):
    """(padded tensor, paddings constant) for NHWC tensor ``index`` padded by ph, pw."""
    from tensorflow.lite.python import schema_py_generated as schema

    src = graph.tensors[index]
    buffer = schema.BufferT()
    buffer.data = np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32).tobytes()
    model.buffers.append(buffer)
    paddings = schema.TensorT()
    paddings.shape, paddings.type = [4, 2], schema.TensorType.INT32
    paddings.buffer, paddings.name = len(model.buffers) - 1, (src.name or b"t") + b"/paddings"
    out = schema.TensorT()
    grow = [0, 2 * ph, 2 * pw, 0]
    out.shape = [d + g if d > 0 else d for d, g in zip(src.shape, grow)]
    if src.shapeSignature is not None and len(src.shapeSignature):
        out.shapeSignature = [d + g if d > 0 else d for d, g in zip(src.shapeSignature, grow)]
    out.type, out.buffer = src.type, 0
    out.name = (src.name or b"t") + b"/padded"
    graph.tensors += [out, paddings]
    return len(graph.tensors) - 2, len(graph.tensors) - 1
