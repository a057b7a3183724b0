"""A SavedModel that is not a tf-keras model (Keras 3's ``model.export()``, a ``tf.Module``
with a serving signature, any TF graph), wrapped as a one-layer tf-keras model.

Such a model has no Keras layers, so nothing can train or wrap it: it takes the
post-training path only (conversions, evaluation, benchmark, serving). The wrapper calls
the signature's graph; saving the wrapper saves that graph with its variables, so every
exporter reads it as it reads any model. Loading a SavedModel runs no Python code: it is a
graph and its variables.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy.errors import CheckpointError


class SignatureLayer(keras.layers.Layer):
    """Calls one signature of a loaded SavedModel; returns logits (a probability output
    becomes log-probabilities, whose softmax is the same probabilities)."""

    def __init__(self, loaded, signature, output, probabilities, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self._loaded = loaded
        # Its variables as this layer's weights: whatever saves the model's weights (the
        # SavedModel export, the ONNX freeze) then tracks what the graph reads.
        self._function = loaded.signatures[signature]
        self._graph_variables = list(self._function.variables)
        self._input = next(iter(self._function.structured_input_signature[1]))
        self._output, self._probabilities = output, probabilities

    def call(self, inputs):
        out = tf.cast(self._function(**{self._input: inputs})[self._output], tf.float32)
        return tf.math.log(tf.maximum(out, 1e-12)) if self._probabilities else out


def load(path, where, signature, output, num_labels):
    """A tf-keras model that runs ``signature`` of the SavedModel in ``path``."""
    try:
        loaded = tf.saved_model.load(path)
    except (ValueError, OSError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: cannot load the SavedModel: {first}") from None
    if signature not in loaded.signatures:
        raise CheckpointError(f"{where}: no signature {signature!r} (it has: "
                              f"{', '.join(loaded.signatures) or 'none'}); set "
                              f"model.signature")
    function = loaded.signatures[signature]
    specs = function.structured_input_signature[1]
    if len(specs) != 1:
        raise CheckpointError(f"{where}: signature {signature!r} takes {len(specs)} inputs "
                              f"({', '.join(specs)}); type keras takes single-input models")
    (name, spec), = specs.items()
    output = output_name(function, where, signature, output, num_labels)
    probabilities = returns_probabilities(function, name, spec, output)
    inputs = keras.Input(spec.shape[1:], dtype=spec.dtype, name=name)
    layer = SignatureLayer(loaded, signature, output, probabilities, name="saved_model")
    return keras.Model(inputs, layer(inputs), name="saved_model")


def output_name(function, where, signature, output, num_labels):
    outputs = function.structured_outputs
    if output:
        if output not in outputs:
            raise CheckpointError(f"{where}: signature {signature!r} has no output {output!r} "
                                  f"(it has: {', '.join(outputs)})")
        return output
    fitting = [n for n, t in outputs.items() if t.shape[-1] == num_labels]
    if len(fitting) != 1:
        raise CheckpointError(f"{where}: signature {signature!r} outputs "
                              f"{', '.join(f'{n} {t.shape}' for n, t in outputs.items())}; "
                              f"{'none' if not fitting else 'several'} give one value per "
                              f"class ({num_labels}); name one in model.output")
    return fitting[0]


def returns_probabilities(function, name, spec, output):
    """Whether the output is a softmax: rows of random inputs all in [0, 1] summing to 1.
    Logits do that by chance with vanishing probability; probabilities always do."""
    shape = [4 if d is None else d for d in spec.shape]
    rng = np.random.default_rng(0)
    sample = tf.constant(rng.random(shape).astype(spec.dtype.as_numpy_dtype))
    out = function(**{name: sample})[output].numpy().astype(np.float64)
    return bool(out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(-1), 1, atol=1e-4))
