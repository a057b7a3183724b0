"""Batch norms folded into the convolution before them, for quantization-aware training.

With conv -> BN -> ReLU quantized as TFMOT does it (fake-quantized kernel, then the BN in
float), the TFLite converter cannot fold the BN into the int8 conv: the int8 file computed
every BN as DEQUANTIZE -> MUL -> ADD -> QUANTIZE (measured on the MobileNet CNN). Folding
first (kernel * gamma / sqrt(var + eps) per output channel; bias (b - mean) * that scale +
beta) leaves the model's outputs as they were in inference mode, and QAT then learns int8
ranges for exactly the conv the int8 file runs. Zeros stay zeros; a clustered kernel keeps
its values per output channel (each channel is scaled once), which is how the int8 kernel
stores them anyway (one scale per output channel).
"""
import copy

import numpy as np
import tf_keras as keras

CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def inbound_names(model):
    """{layer name: names of the layers feeding it} in this model's own graph (from its
    config: a layer object shared with an earlier model, as stripping leaves them, also
    holds that model's nodes)."""
    config, out = model.get_config(), {}
    if "input_layers" not in config:  # a Sequential config lists no graph: nothing to fold
        return out
    for entry in config["layers"]:
        out[entry["name"]] = [ref[0] for node in entry["inbound_nodes"] for ref in node]
    return out


def foldable_pairs(model):
    """{batch-norm name: conv name} for each BN on the last axis whose only input is a
    linear conv read by nothing else."""
    inbound = inbound_names(model)
    readers = {}
    for name, sources in inbound.items():
        for source in sources:
            readers[source] = readers.get(source, 0) + 1
    pairs = {}
    for layer in model.layers:
        sources = inbound.get(layer.name, [])
        if not isinstance(layer, keras.layers.BatchNormalization) or len(sources) != 1 or \
                list(layer.axis) not in ([3], [-1]):
            continue
        conv = model.get_layer(sources[0])
        if isinstance(conv, CONVS) and readers.get(conv.name) == 1 and \
                keras.activations.serialize(conv.activation) == "linear":
            pairs[layer.name] = conv.name
    return pairs


def fold_batch_norms(model):
    """(a copy of functional ``model`` with the foldable BNs folded, their names)."""
    pairs = foldable_pairs(model)
    if not pairs:
        return model, []
    config = copy.deepcopy(model.get_config())
    convs = set(pairs.values())
    kept = []
    for entry in config["layers"]:
        if entry["name"] in pairs:
            continue
        if entry["name"] in convs:
            entry["config"]["use_bias"] = True
        entry["inbound_nodes"] = _rename(entry["inbound_nodes"], pairs)
        kept.append(entry)
    config["layers"] = kept
    config["output_layers"] = _rename(config["output_layers"], pairs)
    folded = keras.Model.from_config(config)
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if layer.name in convs:
            bn = next(model.get_layer(b) for b, c in pairs.items() if c == layer.name)
            layer.set_weights(_folded_weights(source, bn))
        else:
            layer.set_weights(source.get_weights())
    return folded, sorted(pairs)


def _rename(value, pairs):
    """``value`` with every reference to a folded BN pointing at its conv instead."""
    if isinstance(value, list):
        return [_rename(v, pairs) for v in value]
    return pairs.get(value, value) if isinstance(value, str) else value


def _folded_weights(conv, bn):
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    weights = conv.get_weights()
    kernel = weights[0]
    bias = weights[1] if conv.use_bias else np.zeros(scale.shape, np.float32)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # [kh, kw, in, multiplier]
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:  # [kh, kw, in, out]
        kernel = kernel * scale
    bias = (bias - bn.moving_mean.numpy()) * scale + beta
    return [kernel.astype(np.float32), bias.astype(np.float32)]
