"""Where quantizers go in the layer graph: which layers keep a float output, and which
layers feed a quantized one (they get an output quantizer)."""
import tensorflow as tf
import tf_keras as keras


def float_outputs(model):
    """Layers feeding an input that its consumer declares float (``float_inputs``)."""
    out = set()
    for layer in model.layers:
        for index in getattr(layer, "float_inputs", ()):
            for node in layer.inbound_nodes:
                out.add(node.inbound_layers[index].name)
    return out


# Layers that only pool, pad, reshape or clamp values: an int8 kernel exists for each, so
# a quantized region can run through them. Without an output quantizer behind them, the
# int8 file dequantizes before them (e.g. a float ReLU6 + MEAN before a CNN's classifier).
PASS_THROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                keras.layers.ZeroPadding2D, keras.layers.GlobalAveragePooling1D,
                keras.layers.GlobalAveragePooling2D, keras.layers.AveragePooling2D,
                keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.ReLU)


def inbound(model):
    """{layer name: [the layers whose outputs it reads]} in ``model`` alone. A
    layer reused by a clone (TFMOT's strip_clustering keeps the unwrapped layers) has a node
    in each model; only this model's count (Keras keys them ``<layer>_ib-<index>``)."""
    own = model._network_nodes  # noqa: SLF001 — Keras has no public list of a model's nodes
    out = {}
    for layer in model.layers:
        out[layer.name] = [l for i, node in enumerate(layer.inbound_nodes)
                           if f"{layer.name}_ib-{i}" in own
                           for l in tf.nest.flatten(node.inbound_layers)]
    return out


def feeders(model, names):
    """Layers whose output enters a chosen layer and that are not chosen themselves; and
    where such a feeder is reached from another chosen layer through pass-through layers
    only, those layers too, so the int8 region runs through them. A ReLU there is passed
    but not annotated: TFMOT's LayerReLUQuantize would give the conv before it a no-op
    config (float weights, pruned zeros lost); the converter fuses it into that conv."""
    reads, out = inbound(model), set()
    for name in names:
        for layer in reads[name]:  # a Sequential model's InputLayer is not in its layers
            if layer.name not in names and not isinstance(layer, keras.layers.InputLayer):
                out.add(layer.name)
                out.update(l.name for l in bridge(reads, layer, names)
                           if not isinstance(l, keras.layers.ReLU))
    return out


def bridge(reads, layer, names):
    """The pass-through layers from ``layer`` back to a chosen layer ([] if none)."""
    path = []
    while isinstance(layer, PASS_THROUGH):
        path.append(layer)
        before = reads[layer.name]
        if len(before) != 1:
            return []
        layer = before[0]
        if layer.name in names:
            return path
    return []
