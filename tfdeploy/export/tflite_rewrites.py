"""Rewrites of a converted .tflite flatbuffer, each exact (the same numbers computed):
shared zero-point vectors, int8 weights on the quantizer's grid, float islands around ops
XNNPACK runs only in float, and embedding GATHERs as EMBEDDING_LOOKUPs."""
import numpy as np


def shared_zero_points(data):
    """The same flatbuffer with each distinct int64 vector stored once. TFLite's schema
    wants one int64 zero point per scale: per-channel int8 stores a vector of zeros the
    length of every weight's and bias's output channels. Readers follow offsets, so tensors
    can point at one shared vector (on a MobileNet-style CNN: 0.31x -> 0.28x the fp32
    file; the values the interpreter reads are the same)."""
    import flatbuffers
    from tensorflow.lite.tools import flatbuffer_utils

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size):
            super().__init__(size)
            self.written = {}

        def CreateNumpyVector(self, x):  # noqa: N802 — flatbuffers' name
            if x.dtype != np.int64:
                return super().CreateNumpyVector(x)
            key = (len(x), x.tobytes())
            if key not in self.written:
                self.written[key] = super().CreateNumpyVector(x)
            return self.written[key]

    model = flatbuffer_utils.convert_bytearray_to_object(data)
    builder = SharingBuilder(max(1024, len(data)))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def int8_grid_weights(data):
    """Store as int8 the float FULLY_CONNECTED weights that already lie on an int8 grid.

    A QAT layer whose output is meant to stay float (V in attention, so probs x V is a float
    matmul) has fake-quantized weights, but the converter folds them into float32: 4x the
    bytes and a float matmul. Their values are exactly ``k * scale`` with ``|k| <= 127``, so
    storing ``k`` as int8 with that scale loses nothing; TFLite runs the op as a hybrid FC
    (int8 weights, activations quantized on the fly), as the dynamic-range variant does.
    Weights off the grid (a layer QAT left alone) are kept as they are.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    hybrid = None
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != fc or len(op.inputs) < 2:
                continue
            x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
            raw = model.buffers[w.buffer].data
            if schema.TensorType.FLOAT32 != x.type or schema.TensorType.FLOAT32 != w.type \
                    or raw is None or len(raw) == 0:
                continue
            values = np.frombuffer(bytes(raw), np.float32)
            scale = float(np.abs(values).max()) / 127
            steps = values / scale if scale > 0 else values
            if scale == 0 or np.abs(steps - np.round(steps)).max() > 1e-3:
                continue
            model.buffers[w.buffer].data = np.round(steps).astype(np.int8).tobytes()
            w.type = schema.TensorType.INT8
            w.quantization = schema.QuantizationParametersT()
            w.quantization.scale, w.quantization.zeroPoint = [scale], [0]
            if hybrid is None:  # the op version the converter gives dynamic-range FCs
                hybrid = schema.OperatorCodeT()
                hybrid.builtinCode, hybrid.deprecatedBuiltinCode, hybrid.version = fc, fc, 12
                model.operatorCodes.append(hybrid)
            op.opcodeIndex = model.operatorCodes.index(hybrid)
            op.builtinOptions.asymmetricQuantizeInputs = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# int8 ops that XNNPACK has no kernel for. TFLite then runs them itself (GELU: a 256-entry
# lookup, one thread) and splits the delegated graph around each; in float they stay inside
# XNNPACK. MiniLM, seq 128, 2 threads, one interleaved run against dynamic-range int8:
# full int8 1.00x -> 0.97x at batch 1 (0.80x -> 0.77x at 8), QAT 1.00x -> 0.92x (0.88x ->
# 0.80x).
XNNPACK_FLOAT_ONLY = ("GELU",)


def float_islands(data, ops=XNNPACK_FLOAT_ONLY):
    """Run each int8 op of type ``ops`` in float: DEQUANTIZE -> op -> QUANTIZE, same
    quantization of its input and output. GELU of a dequantized int8 value, quantized
    again, is exactly what the int8 lookup table holds, up to rounding."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    builtin = {getattr(schema.BuiltinOperator, name) for name in ops}

    def opcode(code, version=1):
        for i, c in enumerate(model.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code and c.version == version:
                return i
        new = schema.OperatorCodeT()
        new.builtinCode, new.version = code, version
        new.deprecatedBuiltinCode = min(code, 127)  # the schema's 8-bit field
        model.operatorCodes.append(new)
        return len(model.operatorCodes) - 1

    def float_copy(graph, index):
        src, new = graph.tensors[index], schema.TensorT()
        new.shape, new.shapeSignature = src.shape, src.shapeSignature
        new.type, new.buffer = schema.TensorType.FLOAT32, 0  # buffer 0: no data
        new.name = (src.name or b"t") + b"/float"
        graph.tensors.append(new)
        return len(graph.tensors) - 1

    def op(code, inputs, outputs):
        new = schema.OperatorT()
        new.opcodeIndex, new.inputs, new.outputs = opcode(code), inputs, outputs
        return new

    int8 = schema.TensorType.INT8
    for graph in model.subgraphs:
        rewritten = []
        for node in graph.operators:
            code = model.operatorCodes[node.opcodeIndex]
            kind = max(code.builtinCode, code.deprecatedBuiltinCode)
            if kind not in builtin or len(node.inputs) != 1 or \
                    graph.tensors[node.inputs[0]].type != int8 or \
                    graph.tensors[node.outputs[0]].type != int8:
                rewritten.append(node)
                continue
            x, y = node.inputs[0], node.outputs[0]
            xf, yf = float_copy(graph, x), float_copy(graph, y)
            node.inputs, node.outputs = [xf], [yf]
            node.opcodeIndex = opcode(kind)
            rewritten += [op(schema.BuiltinOperator.DEQUANTIZE, [x], [xf]), node,
                          op(schema.BuiltinOperator.QUANTIZE, [yf], [y])]
        graph.operators = rewritten
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def gathers_as_lookups(data):
    """Rewrite each GATHER of a constant 2-D float table (axis 0, int32 ids) as
    EMBEDDING_LOOKUP, which takes 1-D ids: ids of another rank are flattened first and the
    rows reshaped back to ``ids.shape + [width]``. Returns the new flatbuffer bytes."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    edit = _Editor(model, schema)
    for graph in model.subgraphs:
        ops = []
        for node in graph.operators:
            ops += edit.lookup(graph, node) if edit.is_table_gather(graph, node) else [node]
        graph.operators = ops
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class _Editor:
    """Adds ops, tensors and constants to a flatbuffer model object."""

    def __init__(self, model, schema):
        self.model, self.s = model, schema

    def kind(self, node):
        code = self.model.operatorCodes[node.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    def is_table_gather(self, graph, node):
        s = self.s
        if self.kind(node) != s.BuiltinOperator.GATHER or len(node.inputs) != 2:
            return False
        table, ids = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
        raw = self.model.buffers[table.buffer].data
        options = node.builtinOptions
        return table.type == s.TensorType.FLOAT32 and raw is not None and len(raw) > 0 and \
            len(table.shape) == 2 and options.axis == 0 and options.batchDims == 0 and \
            ids.type == s.TensorType.INT32

    def lookup(self, graph, node):
        s, B, T = self.s, self.s.BuiltinOperator, self.s.TensorType
        table_i, ids_i, out_i = node.inputs[0], node.inputs[1], node.outputs[0]
        ids = graph.tensors[ids_i]
        rank = len(ids.shapeSignature if ids.shapeSignature is not None else ids.shape)
        if rank == 1:
            return [self.op(B.EMBEDDING_LOOKUP, [ids_i, table_i], [out_i])]
        width = int(graph.tensors[table_i].shape[1])
        name = graph.tensors[out_i].name
        flat_shape = self.tensor(graph, name + b"/flat_shape", T.INT32, [1], [-1])
        flat = self.tensor(graph, name + b"/ids", T.INT32, [-1])
        rows = self.tensor(graph, name + b"/rows", T.FLOAT32, [-1, width])
        ids_shape = self.tensor(graph, name + b"/ids_shape", T.INT32, [rank])
        width_i = self.tensor(graph, name + b"/width", T.INT32, [1], [width])
        out_shape = self.tensor(graph, name + b"/shape", T.INT32, [rank + 1])
        shape_opts = s.ShapeOptionsT()
        shape_opts.outType = T.INT32
        concat_opts = s.ConcatenationOptionsT()
        concat_opts.axis = 0
        return [self.op(B.RESHAPE, [ids_i, flat_shape], [flat]),
                self.op(B.EMBEDDING_LOOKUP, [flat, table_i], [rows]),
                self.op(B.SHAPE, [ids_i], [ids_shape], s.BuiltinOptions.ShapeOptions, shape_opts),
                self.op(B.CONCATENATION, [ids_shape, width_i], [out_shape],
                        s.BuiltinOptions.ConcatenationOptions, concat_opts),
                self.op(B.RESHAPE, [rows, out_shape], [out_i])]

    def opcode(self, code):
        for i, c in enumerate(self.model.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
                return i
        new = self.s.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = code, min(code, 127), 1
        self.model.operatorCodes.append(new)
        return len(self.model.operatorCodes) - 1

    def op(self, code, inputs, outputs, options_type=0, options=None):
        new = self.s.OperatorT()
        new.opcodeIndex, new.inputs, new.outputs = self.opcode(code), inputs, outputs
        new.builtinOptionsType, new.builtinOptions = options_type, options
        return new

    def tensor(self, graph, name, dtype, shape, value=None):
        new = self.s.TensorT()
        new.name, new.type, new.buffer = name, dtype, 0  # buffer 0: no data
        new.shape, new.shapeSignature = [max(d, 1) for d in shape], list(shape)
        if value is not None:
            buffer = self.s.BufferT()
            buffer.data = np.asarray(value, np.int32).tobytes()
            self.model.buffers.append(buffer)
            new.buffer = len(self.model.buffers) - 1
        graph.tensors.append(new)
        return len(graph.tensors) - 1
