"""Int8 weights for a quantization-aware model's ONNX graph.

tf2onnx turns a QAT model's activation fake-quant ops into QuantizeLinear/DequantizeLinear
pairs, but folds each kernel's fake quant into a float32 constant: the file is as big as
the float one (bigger: the unused fake-quant constants stay), and its convs and matmuls
read float weights. Here each Conv whose input comes from a DequantizeLinear reads its
kernel as int8 per output channel (symmetric, as TFLite's converter quantizes the same
kernels) and its bias as int32 at input scale x kernel scale, and each such MatMul its
kernel as int8 per tensor (TFMOT's Dense kernel quantizer: symmetric, narrow range, one
scale), all through DequantizeLinear — the QDQ form ONNX Runtime fuses into QLinearConv
and QGemm / QLinearMatMul / MatMulIntegerToFloat. A kernel QAT trained is on that int8 grid
already, so only the kernels QAT left float (depthwise convs before an annotated ReLU)
and the biases round. Embedding tables, which QAT leaves float, are stored int8 too
(:func:`int8_tables`).
"""
import numpy as np


def int8_kernels(model):
    """Rewrite ``model`` (an onnx ModelProto) in place; returns how many convs and
    matmuls changed."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    nodes, tensors, changed = [], [], 0
    for node in graph.node:
        scale = input_scale(node, producers, inits)
        if scale is not None:
            added, new_tensors, inputs = quantized_inputs(node, inits, scale, numpy_helper)
            nodes.extend(added)
            tensors.extend(new_tensors)
            del node.input[:]
            node.input.extend(inputs)
            changed += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(tensors)
    drop_unused(graph)
    return changed


def drop_pad_requantize(model):
    """Rewire each Conv that reads ``DequantizeLinear -> Pad -> QuantizeLinear ->
    DequantizeLinear`` to read the Pad directly; returns how many pads changed.

    TFMOT gives a ZeroPadding2D between two quantized layers its own output quantizer. ORT
    folds a Pad into the conv after it only when nothing sits between them (PadFusion), so
    with the pair in between the Pad and the pair ran as three float nodes per block. The
    pad adds zeros, which the input's quantization holds exactly; the conv then reads that
    quantization instead of a re-quantized copy (the pad's range is the input's plus 0).
    A Pad before a Transpose (the stem, NHWC to NCHW) is left as it is."""
    from tfdeploy.export.onnx import links

    graph = model.graph
    producers, consumers = links(graph)
    dropped, changed = set(), 0
    for pad in graph.node:
        if pad.op_type != "Pad" or getattr(producers.get(pad.input[0]), "op_type", "") != \
                "DequantizeLinear":
            continue
        (quantize, *more) = consumers.get(pad.output[0], [None])
        if more or quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        (dequantize, *more) = consumers.get(quantize.output[0], [None])
        if more or dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        readers = consumers.get(dequantize.output[0], [])
        if not readers or any(r.op_type != "Conv" for r in readers):
            continue
        for reader in readers:
            reader.input[0] = pad.output[0]
        dropped |= {id(quantize), id(dequantize)}
        changed += 1
    remove_nodes(graph, dropped)
    return changed


def drop_requantize_before_activation(model):
    """Rewire each ReLU/Clip that reads ``Conv -> QuantizeLinear -> DequantizeLinear`` to
    read the Conv; returns how many changed.

    A 1x1 conv's ReLU6 is left unannotated in QAT (see the qat stage), so TFMOT quantizes
    the conv's output and again the ReLU6's. ORT fuses a conv into QLinearConv up to the
    next QuantizeLinear and drops a Clip that quantizer cannot leave; with the conv's own
    pair in between it ran a second requantization per block. Quantized once, after the
    activation, is also how the TFLite converter writes conv + ReLU6."""
    from tfdeploy.export.onnx import links

    graph = model.graph
    producers, consumers = links(graph)
    dropped = set()
    for activation in graph.node:
        if activation.op_type not in ("Relu", "Clip"):
            continue
        dequantize = producers.get(activation.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or \
                len(consumers.get(dequantize.output[0], [])) != 1:
            continue
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or \
                len(consumers.get(quantize.output[0], [])) != 1:
            continue
        conv = producers.get(quantize.input[0])
        if conv is None or conv.op_type != "Conv" or \
                len(consumers.get(conv.output[0], [])) != 1:
            continue
        activation.input[0] = conv.output[0]
        dropped |= {id(quantize), id(dequantize)}
    remove_nodes(graph, dropped)
    return len(dropped) // 2


def remove_nodes(graph, dropped):
    """Remove the nodes whose ``id`` is in ``dropped``, keeping the others' order."""
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def input_scale(node, producers, inits):
    """The per-tensor scale of a Conv's or MatMul's input DequantizeLinear (through
    Transposes and Pads), or None when the node is not one with a constant kernel reading
    one."""
    from onnx import numpy_helper

    if node.op_type not in ("Conv", "MatMul") or len(node.input) < 2 or \
            node.input[1] not in inits:
        return None
    source = producers.get(node.input[0])
    while source is not None and source.op_type in ("Transpose", "Pad"):
        source = producers.get(source.input[0])
    if source is None or source.op_type != "DequantizeLinear" or \
            source.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[source.input[1]])
    return float(scale) if scale.size == 1 else None


def quantized_inputs(node, inits, input_scale, numpy_helper):
    """(DequantizeLinear nodes, their initializers, the node's new inputs): a Conv's
    kernel per output channel (its first axis) and bias, a MatMul's kernel per tensor."""
    from onnx import helper

    kernel = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    channels = len(kernel) if node.op_type == "Conv" else 1
    q, scale = symmetric_int8(kernel, channels)
    base = node.name or node.output[0]
    parts = [("kernel", q, scale, np.int8)]
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in inits:
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        bias_scale = (input_scale * scale).astype(np.float32)
        parts.append(("bias", np.round(bias / bias_scale).astype(np.int32), bias_scale,
                      np.int32))
    added, tensors, inputs = [], [], [node.input[0]]
    for what, values, part_scale, dtype in parts:
        names = [f"{base}/int8_{what}", f"{base}/int8_{what}_scale",
                 f"{base}/int8_{what}_zero"]
        per_tensor = channels == 1  # a scalar scale: DequantizeLinear per tensor
        tensors += [numpy_helper.from_array(values, names[0]),
                    numpy_helper.from_array(part_scale[0] if per_tensor else part_scale,
                                            names[1]),
                    numpy_helper.from_array(np.zeros((), dtype) if per_tensor else
                                            np.zeros(channels, dtype), names[2])]
        added.append(helper.make_node("DequantizeLinear", names, [f"{base}/{what}_dq"],
                                      **({} if per_tensor else {"axis": 0})))
        inputs.append(f"{base}/{what}_dq")
    return added, tensors, inputs


def symmetric_int8(values, channels):
    """(int8 values, float32 scales): symmetric, narrow range [-127, 127], one scale per
    slice of the first axis when ``channels`` > 1, else one for the whole tensor."""
    peak = np.abs(values).reshape(channels, -1).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shaped = scale.reshape(-1, *[1] * (values.ndim - 1)) if channels > 1 else scale[0]
    return np.clip(np.round(values / shaped), -127, 127).astype(np.int8), scale


def int8_tables(model, min_width=2):
    """Store each constant 2-D float table a Gather reads on axis 0 (an embedding) as
    int8 with one symmetric scale, the gathered rows dequantized after the lookup (ORT's
    dynamic int8 stores tables the same way). Tables narrower than ``min_width`` (per-id
    biases) stay float: one scale shared by every id would round small biases away.
    Returns how many tables changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, tensors, stored = [], [], {}  # table -> its int8 inputs (shared tables once)
    for node in graph.node:
        nodes.append(node)
        table = node.input[0] if node.op_type == "Gather" else None
        if table not in inits or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        values = numpy_helper.to_array(inits[table])
        if values.dtype != np.float32 or values.ndim != 2 or values.shape[1] < min_width:
            continue
        if table not in stored:
            q, scale = symmetric_int8(values, 1)
            stored[table] = [f"{table}/int8", f"{table}/int8_scale", f"{table}/int8_zero"]
            tensors += [numpy_helper.from_array(q, stored[table][0]),
                        numpy_helper.from_array(scale[0], stored[table][1]),
                        numpy_helper.from_array(np.zeros((), np.int8), stored[table][2])]
        names, base, rows = stored[table], node.name or node.output[0], node.output[0]
        node.input[0], node.output[0] = names[0], f"{base}/int8_rows"
        nodes.append(helper.make_node("DequantizeLinear", [node.output[0], *names[1:]],
                                      [rows]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(tensors)
    drop_unused(graph)
    return len(stored)


def drop_unused(graph):
    """Keep the initializers some node reads (new ones included, old float ones gone)."""
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
