"""ONNX artifacts via tf2onnx, run with ONNX Runtime.

tf2onnx 1.17 has no handler for ``Erfc``, which TF 2.21 emits for exact GELU
(``0.5 * x * erfc(-x / sqrt(2))``); without one the file fails to load in ONNX Runtime.
We register ``Erfc(x) -> 1 - Erf(x)`` (exact, since erfc = 1 - erf) rather than switch the
model to tanh-GELU, which would change its outputs.

``onnx_fp32`` is the converted graph with exact GELU fused into ORT's ``Gelu`` op (ours:
ORT's fusion only knows the ``1 + erf`` form), then whatever rewrites the model plugin
declares (BERT: its attention blocks into ORT's ``Attention`` op, then ORT's transformer
optimizer); ``onnx_int8`` is that graph with ORT dynamic int8 quantization of the matmuls
*and* the embedding gathers.
"""
import os
import tempfile

import numpy as np
import tensorflow as tf

from tfdeploy.export import Format, register
from tfdeploy.export.runtime import register_runtime, starts_with
from tfdeploy.rundir import atomic_write_bytes

_registered = False


@register
class OnnxFp32(Format):
    name, runtime, is_float, suffix, order = "onnx_fp32", "onnxruntime", True, ".onnx", 20

    def write(self, job, path):
        return job.onnx_fp32()


@register
class OnnxInt8(Format):
    name, runtime, suffix, order = "onnx_int8", "onnxruntime", ".onnx", 21
    precisions = ("int8", "float")

    def write(self, job, path):
        return quantize(job.onnx_fp32(), path)

    def layers(self, job):
        return job.once(("onnx_layers", self.name),
                        lambda: weight_nodes(job.onnx_fp32(), DYNAMIC_OPS))

    def write_mixed(self, job, path, kept):
        return quantize(job.onnx_fp32(), path, exclude=sorted(kept))

    def mixed_recipe(self, job, kept):
        return {"engine": "onnxruntime.quantization.quantize_dynamic",
                "op_types_to_quantize": list(DYNAMIC_OPS), "nodes_to_exclude": sorted(kept)}

    def dry_run(self, model, recipe):
        return (f"{self.name}: ORT dynamic int8 of {', '.join(DYNAMIC_OPS)} nodes with "
                f"constant weights (per tensor), activations quantized at run time",)


DYNAMIC_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")


def weight_nodes(path, op_types):
    """[(node name, op type)] of the ``op_types`` nodes that read a constant (weights)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [(n.name, n.op_type) for n in graph.node
            if n.op_type in op_types and n.name and any(i in constants for i in n.input)]


def register_erfc():
    global _registered
    if _registered:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841  (registered by the decorator)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x = node.input[0]
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
            one = ctx.make_const(utils.make_name(node.name + "_one"), np.array(1, dtype))
            erf = ctx.make_node("Erf", [x], op_name_scope=node.name, name="erf")
            shapes, dtypes, outputs = node.output_shapes, node.output_dtypes, node.output
            ctx.remove_node(node.name)
            ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=outputs,
                          name=node.name, shapes=shapes, dtypes=dtypes)

    _registered = True


def convert(model, input_specs, opset=17):
    """ONNX ModelProto of ``model`` with named int32 inputs and a ``logits`` output."""
    import tf2onnx

    register_erfc()
    names = list(input_specs)
    specs = [input_specs[n] for n in names]

    @tf.function(input_signature=specs)
    def serve(*args):
        return {"logits": tf.cast(model(dict(zip(names, args)), training=False), tf.float32)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset)
    freeze_captured_tensors(proto, serve.get_concrete_function(*specs))
    return proto


def freeze_captured_tensors(proto, concrete):
    """Constants a model captured as eager tensors (e.g. the masks of TFMOT's
    prune-preserving quantizers) come out of tf2onnx as extra graph inputs; make them
    initializers with their values, as the variables are."""
    from onnx import numpy_helper

    values = {}
    for external, internal in zip(concrete.captured_inputs, concrete.graph.internal_captures):
        if external.dtype != tf.resource:
            values[internal.name] = external.numpy()
    extra = [i for i in proto.graph.input if i.name in values]
    for graph_input in extra:
        proto.graph.initializer.append(numpy_helper.from_array(values[graph_input.name],
                                                               graph_input.name))
        proto.graph.input.remove(graph_input)


def const_value(graph, name):
    """The value of an initializer or Constant node output, or None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def links(graph):
    """({tensor: node that makes it}, {tensor: [nodes that read it]}) of an ONNX graph."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def fuse_gelu(proto):
    """Replace TF's exact GELU, ``0.5 * x * erfc(-x / sqrt(2))`` as converted
    (Neg, Mul, Erf, Sub, Mul, Mul), with ORT's ``com.microsoft.Gelu`` (the same exact erf
    GELU, one kernel; ORT then fuses the bias into BiasGelu). ORT's own Gelu fusion only
    knows the ``1 + erf`` form. Returns the number of GELUs fused."""
    from onnx import helper

    graph = proto.graph
    producer, consumers = links(graph)

    def is_const(name, value):
        got = const_value(graph, name)
        return got is not None and got.size == 1 and abs(float(got) - value) < 1e-5

    def other(node, name):
        return node.input[1] if node.input[0] == name else node.input[0]

    def only_consumer(name):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    fused, remove = 0, set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        scale = producer.get(erf.input[0])
        if scale is None or scale.op_type != "Mul":
            continue
        neg = next((producer.get(i) for i in scale.input
                    if producer.get(i) is not None and producer[i].op_type == "Neg"), None)
        if neg is None or not is_const(other(scale, neg.output[0]), 0.5 ** 0.5):
            continue
        x = neg.input[0]
        sub = only_consumer(erf.output[0])
        if sub is None or sub.op_type != "Sub" or sub.input[1] != erf.output[0] \
                or not is_const(sub.input[0], 1.0):
            continue
        out = only_consumer(sub.output[0])
        if out is None or out.op_type != "Mul":
            continue
        half = producer.get(other(out, sub.output[0]))
        if half is None or half.op_type != "Mul" or x not in half.input \
                or not is_const(other(half, x), 0.5):
            continue
        chain = [neg, scale, erf, sub, half]
        if any(len(consumers.get(n.output[0], [])) != 1 for n in chain):
            continue
        gelu = helper.make_node("Gelu", [x], list(out.output), name=out.name + "_gelu",
                                domain="com.microsoft")
        out.CopyFrom(gelu)  # keeps the node's place in topological order
        _declare_float(graph, out.output[0])
        remove.update(n.output[0] for n in chain)
        fused += 1
    if fused:
        _remove_nodes(graph, remove)
        use_ms_domain(proto)
    return fused


def _remove_nodes(graph, first_outputs):
    """Drop the nodes whose first output is in ``first_outputs`` (protobuf node wrappers
    have no stable identity, their output names do)."""
    kept = [n for n in graph.node if not (n.output and n.output[0] in first_outputs)]
    del graph.node[:]
    graph.node.extend(kept)


def _declare_float(graph, name):
    """ONNX shape inference does not know com.microsoft ops; the quantizer needs the type
    of what they output."""
    from onnx import TensorProto, helper

    if not any(v.name == name for v in graph.value_info):
        graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def use_ms_domain(proto):
    """Declare the com.microsoft opset the fused ORT ops come from."""
    from onnx import helper

    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def drop_unused(graph):
    """Remove nodes and initializers nothing reads any more (the replaced subgraphs)."""
    while True:
        used = {o.name for o in graph.output}
        for node in graph.node:
            used.update(node.input)
        kept = [n for n in graph.node if any(o in used for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    kept_init = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)


def optimize(proto, model_type, num_heads=0, hidden_size=0):
    """ORT transformer optimizer (fusions) for ``model_type``; returns a ModelProto.

    opt_level 0: only the Python fusions; the level-1 pre-pass imports torch, and the
    session applies ORT's graph optimizations at load time anyway."""
    from onnxruntime.transformers import optimizer

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        optimized = optimizer.optimize_model(path, model_type=model_type, num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=0)
        return optimized.model


def quantize(src_path, dst_path, exclude=()):
    """ORT dynamic int8: weights of MatMul/Attention and the embedding Gather tables, except
    the nodes named in ``exclude`` (they stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(src_path, out, weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=list(DYNAMIC_OPS),
                         nodes_to_exclude=list(exclude))
        with open(out, "rb") as f:
            atomic_write_bytes(dst_path, f.read())
    return dst_path


def write_fp32(model, input_specs, path, opset=17, rewrite=None):
    """Convert, fuse GELU, apply the model plugin's ``rewrite(proto) -> proto``, write."""
    proto = convert(model, input_specs, opset)
    fuse_gelu(proto)
    if rewrite is not None:
        proto = rewrite(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def session(path, threads=2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


TYPES = {"tensor(int32)": np.int32, "tensor(float)": np.float32, "tensor(int64)": np.int64}


def input_specs(path):
    return {i.name: ([d if isinstance(d, int) else None for d in i.shape],
                     np.dtype(TYPES.get(i.type, np.float32)))
            for i in session(path, 1).get_inputs()}


def runner(path, threads=2):
    sess = session(path, threads)
    inputs = {i.name: TYPES.get(i.type, np.float32) for i in sess.get_inputs()}

    def run(features):
        return sess.run(["logits"], {n: np.asarray(features[n], t)
                                     for n, t in inputs.items()})[0]

    return run


# an ONNX ModelProto: a protobuf whose first field is ir_version (tag 0x08)
register_runtime("onnxruntime", lambda path: starts_with(path, 0, b"\x08"), runner,
                 input_specs)
