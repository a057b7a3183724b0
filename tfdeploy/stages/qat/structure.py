"""What a preserving scheme must keep, measured in the Keras weights and in the int8
TFLite file they convert to: zeros and distinct values per weight shape."""
import os
import tempfile

import numpy as np

from tfdeploy.selection import main_weight


def keras_structure(model, names):
    """Per weight shape (sorted dims): zeros and the most distinct values in one layer."""
    out = {}
    for name in names:
        w = main_weight(model.get_layer(name)).numpy()
        key = tuple(sorted(w.shape))
        zeros, unique = out.get(key, (0, 0))
        out[key] = (zeros + int(np.sum(w == 0)), max(unique, int(np.unique(w).size)))
    return out


def tflite_structure(model, context):
    """The same, measured in the int8 TFLite file the model converts to: zeros, and the
    most distinct values in one output channel (int8 scales are per channel)."""
    from tfdeploy.export import savedmodel, tflite

    with tempfile.TemporaryDirectory() as tmp:
        path = savedmodel.export(model, context.plugin.input_specs(), ["x"], tmp, "qat", 1)
        flat = os.path.join(tmp, "qat.tflite")
        tflite.export(path, "tflite_int8", flat)
        out = {}
        for shape, value in tflite.weight_tensors(flat):
            key = tuple(sorted(shape))
            per_channel = value.reshape(shape[0], -1)  # TFLite puts output channels first
            unique = max(int(np.unique(row).size) for row in per_channel)
            zeros, most = out.get(key, (0, 0))
            out[key] = (zeros + int(np.sum(value == 0)), max(most, unique))
        return out
