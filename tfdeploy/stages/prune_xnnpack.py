"""`prune` with ``policy: xnnpack``: what XNNPACK's sparse inference can take, per layer.

XNNPACK runs a float graph's trunk in NCHW with sparse kernels when (its
``xnn_subgraph_rewrite_for_nchw``; TFMOT's ``PruneForLatencyOnXNNPack`` mirrors it): the
subgraph starts with a 3x3 stride-2 Conv2D on 3 input channels with padding 1 on each side
(``ZeroPadding2D(1)`` + ``valid``), holds only 1x1 convs, depthwise 3x3/5x5 convs,
batch norm and elementwise ops, and ends with a global average pool (a MEAN). Only the 1x1
convs are pruned: they are what the sparse kernels multiply; the stem and the depthwise
convs run dense inside the subgraph, and FULLY_CONNECTED after it is not sparsified.
"""
import tf_keras as keras

layers = keras.layers
ELEMENTWISE = (layers.ReLU, layers.Activation, layers.Add, layers.Multiply, layers.Dropout,
               layers.BatchNormalization, layers.ZeroPadding2D, layers.LeakyReLU, layers.ELU)


def is_pointwise(layer):
    return isinstance(layer, layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)


def skip_reason(layer):
    """Why the policy leaves a layer with weights dense, or None for a prunable 1x1 conv."""
    if is_pointwise(layer):
        if tuple(layer.strides) != (1, 1) or tuple(layer.dilation_rate) != (1, 1) or \
                layer.groups != 1:
            return "xnnpack: a 1x1 conv with stride, dilation or groups has no sparse kernel"
        return None
    if isinstance(layer, layers.DepthwiseConv2D):
        return "xnnpack: depthwise convs run dense inside the sparse subgraph"
    if isinstance(layer, layers.Conv2D) and _stem_problem(layer) is None:
        return "xnnpack: the stem (3x3/2 on 3 channels) starts the sparse subgraph, dense"
    if isinstance(layer, layers.Dense):
        return "xnnpack: FULLY_CONNECTED is not sparsified (it runs after the subgraph)"
    return f"xnnpack: {type(layer).__name__} has no sparse kernel (only 1x1 convs do)"


def producers(layer):
    out = []
    for node in layer._inbound_nodes:
        inbound = node.inbound_layers
        out.extend(inbound if isinstance(inbound, list) else [inbound])
    return out


def _stem_problem(layer):
    """Why ``layer`` cannot start XNNPACK's sparse subgraph, or None."""
    kernel = tuple(layer.kernel_size)
    channels = int(layer.input_shape[-1])
    before = producers(layer)
    padded = len(before) == 1 and isinstance(before[0], layers.ZeroPadding2D) and \
        tuple(map(tuple, before[0].padding)) == ((1, 1), (1, 1))
    if isinstance(layer, layers.DepthwiseConv2D) or kernel != (3, 3) or \
            tuple(layer.strides) != (2, 2) or channels != 3 or layer.padding != "valid" or \
            not padded:
        return (f"the sparse subgraph must start with a 3x3 stride-2 Conv2D on 3 input "
                f"channels, padding 'valid' after ZeroPadding2D(1); {layer.name} is a "
                f"{type(layer).__name__} {kernel[0]}x{kernel[1]}, stride "
                f"{tuple(layer.strides)[0]}, {channels} input channel(s), padding "
                f"{layer.padding!r}{'' if padded else ', without ZeroPadding2D(1) before it'}")
    return None


def _inside_problem(layer):
    """Why ``layer`` cannot sit between the stem and the pooling, or None."""
    if isinstance(layer, ELEMENTWISE) or is_pointwise(layer):
        return None
    if isinstance(layer, layers.DepthwiseConv2D):
        k = tuple(layer.kernel_size)
        if k in ((3, 3), (5, 5)) and layer.depth_multiplier == 1 and \
                tuple(layer.dilation_rate) == (1, 1) and tuple(layer.strides) in ((1, 1), (2, 2)):
            return None
        return (f"depthwise {k[0]}x{k[1]}, stride {tuple(layer.strides)[0]}, depth multiplier "
                f"{layer.depth_multiplier}: XNNPACK's sparse subgraph takes 3x3 or 5x5, "
                f"stride 1 or 2, multiplier 1")
    return (f"a {type(layer).__name__} between the stem and the global average pool: "
            f"XNNPACK's sparse subgraph holds only 1x1 convs, depthwise convs, batch norm "
            f"and elementwise ops")


def structure_problems(model):
    """[(layer, why)] that keep the model from XNNPACK's sparse inference; [] when it fits."""
    from tf_keras.src.engine.functional import Functional

    if not isinstance(model, Functional):
        return [(model.name, "policy xnnpack needs a functional or Sequential model")]
    convs = [l for l in model.layers if isinstance(l, layers.Conv2D) or
             isinstance(l, layers.DepthwiseConv2D)]
    if not convs:
        return [(model.name, "policy xnnpack: the model has no Conv2D (it is for CNNs)")]
    stem, problems = convs[0], []
    if _stem_problem(stem):
        problems.append((stem.name, _stem_problem(stem)))
    pools = [l for l in model.layers if isinstance(l, layers.GlobalAveragePooling2D)]
    if not pools:
        return problems + [(model.name, "no GlobalAveragePooling2D ends the sparse "
                                        "subgraph (XNNPACK's sparse subgraph ends on a MEAN)")]
    pool = pools[-1]
    if not pool.keepdims:
        problems.append((pool.name, "GlobalAveragePooling2D needs keepdims=True (a 4-D MEAN "
                                    "ends XNNPACK's sparse subgraph)"))
    order = model.layers
    for layer in order[order.index(stem) + 1:order.index(pool)]:
        why = _inside_problem(layer)
        if why:
            problems.append((layer.name, why))
    return problems or _tfmot_check(model)


def _tfmot_check(model):
    """TFMOT's own check, so the policy never accepts what TFMOT then refuses."""
    import tensorflow_model_optimization as tfmot

    try:
        tfmot.sparsity.keras.PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)
    except ValueError as e:
        return [(model.name, f"TFMOT's PruneForLatencyOnXNNPack: {e}")]
    return []
