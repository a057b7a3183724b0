"""BERT's ONNX rewrite: each self-attention block becomes one ONNX Runtime ``Attention`` op
(the int8 quantizer turns it into ``QAttention``), then ORT's transformer optimizer runs with
``model_type="bert"``. Without it ORT int8 is not much faster than ORT fp32. Residual Add +
LayerNorm stay two ops: ORT 1.32's CPU ``SkipLayerNormalization`` took 0.46-0.69 ms per
[128, 384] call against 0.12 for Add + LayerNormalization, and the fused int8 BERT ran 1.5x
slower (measured here)."""
import numpy as np

from tfdeploy.export.onnx import const_value, drop_unused, optimize, use_ms_domain


def rewrite(proto, num_heads, hidden_size):
    """Our attention fusion, then ORT's optimizer; returns the new ModelProto."""
    fuse_attention(proto, num_heads, hidden_size)
    return optimize(proto, "bert", num_heads, hidden_size)


def fuse_attention(proto, num_heads, hidden_size):
    """Replace each of our BERT's self-attention blocks (Q/K/V projections on token rows,
    reshapes, scaled scores + mask bias, softmax, context) with one ORT
    ``com.microsoft.Attention`` op, which the int8 quantizer turns into ``QAttention``.
    ORT's own attention fusion only matches the graphs of the exporters it knows. Blocks
    are found by our layer names (``layer_N_attention_query`` ...); the parity check of
    every exported artifact against Keras guards the rewrite. Returns the count fused."""
    import re

    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    by_name = {n.name: n for n in graph.node}
    inputs = {i.name for i in graph.input}
    if not {"input_ids", "attention_mask"} <= inputs:
        return 0
    blocks = {}
    for node in graph.node:
        m = re.fullmatch(r"(.*?)(layer_\d+)_attention_query/MatMul", node.name)
        if m:
            blocks[m.group(2)] = m.group(1)
    new_before, fused = {}, 0
    shape3 = "tfdeploy_attention_shape3"
    for layer, prefix in sorted(blocks.items()):
        parts = {}
        for part in ("query", "key", "value"):
            mm = by_name.get(f"{prefix}{layer}_attention_{part}/MatMul")
            add = by_name.get(f"{prefix}{layer}_attention_{part}/BiasAdd")
            if mm is None or add is None:
                break
            weight = const_value(graph, mm.input[1])
            bias = const_value(graph, add.input[1] if add.input[0] == mm.output[0]
                               else add.input[0])
            if weight is None or bias is None:
                break
            parts[part] = (mm.input[0], weight, bias)
        out = by_name.get(f"{prefix}{layer}_attention_output/MatMul")
        if len(parts) != 3 or out is None or len({p[0] for p in parts.values()}) != 1:
            continue
        rows = parts["query"][0]
        qkv_w = np.concatenate([parts[p][1] for p in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([parts[p][2] for p in ("query", "key", "value")])
        name = f"tfdeploy_{layer}_attention"
        graph.initializer.extend([
            numpy_helper.from_array(qkv_w.astype(np.float32), name + "_qkv_w"),
            numpy_helper.from_array(qkv_b.astype(np.float32), name + "_qkv_b")])
        new_before[out.name] = [
            helper.make_node("Reshape", [rows, shape3], [name + "_in"], name=name + "_in"),
            helper.make_node("Attention", [name + "_in", name + "_qkv_w", name + "_qkv_b",
                                           "attention_mask"], [name + "_out"], name=name,
                             domain="com.microsoft", num_heads=num_heads),
            helper.make_node("Reshape", [name + "_out", "tfdeploy_attention_rows"],
                             [name + "_rows"], name=name + "_rows")]
        graph.value_info.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                for n in (name + "_in", name + "_out", name + "_rows"))
        out.input[0] = name + "_rows"
        fused += 1
    if not fused:
        return 0
    graph.initializer.extend([
        numpy_helper.from_array(np.array([hidden_size], np.int64), "tfdeploy_hidden"),
        numpy_helper.from_array(np.array([-1, hidden_size], np.int64),
                                "tfdeploy_attention_rows")])
    nodes = [  # [batch, seq, hidden] for the Attention ops' 3-D input
        helper.make_node("Shape", ["input_ids"], ["tfdeploy_ids_shape"]),
        helper.make_node("Concat", ["tfdeploy_ids_shape", "tfdeploy_hidden"], [shape3],
                         axis=0)]
    for node in graph.node:
        nodes.extend(new_before.get(node.name, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused(graph)
    use_ms_domain(proto)
    return fused
