"""Activation ranges for quantization-aware training, measured before it starts.

TFMOT starts every activation range at [-6, 6] and moves it 0.1% per training step toward
each batch's [min, max] (an EMA with decay 0.999). A tensor whose values lie far outside
[-6, 6] (a ranker's cross-network outputs, unnormalised features) is clipped for thousands
of steps, and the fit spends them repairing the damage. ``calibrate`` instead sets each
range to where the EMA would settle: the mean over training batches of the float model's
per-batch min and max of that tensor (always including 0, as TFMOT's quantizer does).
"""
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

# TFMOT's names for the range variables of what a layer outputs (QuantizeWrapper's
# activation and output quantizers) and of a QuantizeLayer's input.
OUTPUT_RANGES = ("post_activation", "output")


def range_targets(quantized, float_model):
    """[(float-model layer whose output the range covers, min var, max var)]."""
    float_layers = {layer.name: layer for layer in float_model.layers}
    targets = []
    for layer in quantized.layers:
        ranges = variables_by_name(layer)
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            original = float_layers.get(layer.layer.name)  # the float layer it wraps
            for prefix in OUTPUT_RANGES:
                if original is not None and f"{prefix}_min" in ranges:
                    targets.append((original, ranges[f"{prefix}_min"],
                                    ranges[f"{prefix}_max"]))
        elif f"{layer.name}_min" in ranges:  # a QuantizeLayer: the range of its input
            source = layer.inbound_nodes[0].inbound_layers
            if not isinstance(source, list) and source.name in float_layers:
                targets.append((float_layers[source.name], ranges[f"{layer.name}_min"],
                                ranges[f"{layer.name}_max"]))
    return targets


def variables_by_name(layer):
    """A layer's non-trainable variables by their short name (``output_min``)."""
    return {v.name.split("/")[-1].split(":")[0]: v for v in layer.non_trainable_weights}


def calibrate(quantized, float_model, batches):
    """Set the activation ranges of ``quantized`` from ``float_model`` run on ``batches``
    (inputs only, inference mode). Returns {layer name: (min, max)} as set. Custom layers
    need their custom-object scope (the model is cloned)."""
    targets = range_targets(quantized, float_model)
    if not targets:
        return {}
    names = list(dict.fromkeys(t[0].name for t in targets))
    # a copy, so each layer has one output: the float model's layers may also be called
    # in other graphs (a rebuilt model reuses them), and ``layer.output`` is their first
    copy = keras.models.clone_model(float_model)
    copy.set_weights(float_model.get_weights())
    probe = keras.Model(copy.inputs, [copy.get_layer(name).output for name in names])
    lows, highs = [], []
    for inputs in batches:
        outs = probe(inputs, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        lows.append([float(np.min(o)) for o in outs])
        highs.append([float(np.max(o)) for o in outs])
    low, high = np.mean(lows, axis=0), np.mean(highs, axis=0)
    chosen = {}
    for layer, min_var, max_var in targets:
        i = names.index(layer.name)
        lo, hi = min(float(low[i]), 0.0), max(float(high[i]), 0.0)
        min_var.assign(np.full(min_var.shape, lo, np.float32))
        max_var.assign(np.full(max_var.shape, hi, np.float32))
        chosen[layer.name] = (round(lo, 4), round(hi, 4))
    return chosen


def calibrate_ranges(quantized, float_model, context, batch_size, batches=16):
    """Activation ranges from the float model on ``batches`` training batches."""
    data = context.train.train_dataset(batch_size, context.seed).take(batches)
    chosen = calibrate(quantized, float_model, (x for x, _ in data))
    print(f"  calibrated {len(chosen)} activation ranges on {batches} training batches",
          flush=True)
    return chosen
