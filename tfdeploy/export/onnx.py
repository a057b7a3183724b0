"""ONNX artifacts via tf2onnx, run with ONNX Runtime.

tf2onnx 1.17 has no handler for ``Erfc``, which TF 2.21 emits for exact GELU
(``0.5 * x * erfc(-x / sqrt(2))``); without one the file fails to load in ONNX Runtime.
We register ``Erfc(x) -> 1 - Erf(x)`` (exact, since erfc = 1 - erf) rather than switch the
model to tanh-GELU, which would change its outputs.

``onnx_fp32`` is the converted graph after ONNX Runtime's transformer optimizer (attention,
LayerNorm, GELU fusions where its patterns match); ``onnx_int8`` is that graph with ORT
dynamic int8 quantization of the matmuls *and* the embedding gathers.
"""
import os
import tempfile

import numpy as np
import tensorflow as tf

from tfdeploy.rundir import atomic_write_bytes

VARIANTS = ("onnx_fp32", "onnx_int8")
_registered = False


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
    return proto


def optimize(proto, num_heads=0, hidden_size=0):
    """ORT transformer optimizer (fusions); returns a ModelProto.

    opt_level 0: only the Python fusions; the level-1 pre-pass imports torch, and the
    session applies ORT's graph optimizations at load time anyway."""
    from onnxruntime.transformers import optimizer

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        optimized = optimizer.optimize_model(path, model_type="bert", num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=0)
        return optimized.model


def quantize(src_path, dst_path):
    """ORT dynamic int8: weights of MatMul/Attention and the embedding Gather tables."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(src_path, out, weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=["MatMul", "Attention", "Gather",
                                               "EmbedLayerNormalization"])
        with open(out, "rb") as f:
            atomic_write_bytes(dst_path, f.read())
    return dst_path


def export(model, input_specs, fp32_path, int8_path=None, opset=17, num_heads=0,
           hidden_size=0):
    """Write onnx_fp32 (and onnx_int8 if asked); return the paths written."""
    proto = convert(model, input_specs, opset)
    if num_heads:  # the transformer optimizer only knows transformer patterns
        proto = optimize(proto, num_heads, hidden_size)
    atomic_write_bytes(fp32_path, proto.SerializeToString())
    written = [fp32_path]
    if int8_path:
        written.append(quantize(fp32_path, int8_path))
    return written


def session(path, threads=2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def runner(path, threads=2):
    sess = session(path, threads)
    types = {"tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(int64)": np.int64}
    inputs = {i.name: types.get(i.type, np.float32) for i in sess.get_inputs()}

    def run(features):
        return sess.run(["logits"], {n: np.asarray(features[n], t)
                                     for n, t in inputs.items()})[0]

    return run
