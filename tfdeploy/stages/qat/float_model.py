"""A QAT model's float model: every TFMOT wrapper replaced by the layer it wraps, with the
float weights it trains, and the input quantizers left out.

TFMOT has no inverse of ``quantize_apply``; this is what a user continues from outside
TFMOT (the stage's Keras 3 copy). Its outputs differ from the QAT model's by the fake
quantization only.
"""
import tensorflow_model_optimization as tfmot
import tf_keras as keras
# QuantizeLayer is not in TFMOT's public API
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import \
    QuantizeLayer

QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapperV2


def float_model(model, scopes):
    """``model`` (a QAT model) in plain layers; ``scopes`` load its quantize configs."""
    sources = {}

    def plain(layer):
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Activation("linear", name=layer.name)
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        config = inner.get_config()
        if "activation" in config:  # TFMOT swaps in a QuantizeAwareActivation
            original = getattr(inner.activation, "activation", inner.activation)
            config["activation"] = keras.activations.serialize(original)
        clone = inner.__class__.from_config(config)
        sources[id(clone)] = layer
        return clone

    with scopes():
        plain_model = keras.models.clone_model(model, clone_function=plain)
    for layer in plain_model.layers:
        if id(layer) in sources:
            copy_float_weights(sources[id(layer)], layer)
    return plain_model


def copy_float_weights(source, layer):
    """Each of ``layer``'s weights from the variable of the same path in ``source`` (a
    wrapper holds the float kernel itself once it feeds the layer a quantized one)."""
    found = {_relative(w.name, layer.name): w for w in source.weights}
    for weight in layer.weights:
        weight.assign(found[_relative(weight.name, layer.name)])


def _relative(name, layer_name):
    parts = name.split(":")[0].split("/")
    return "/".join(parts[parts.index(layer_name) + 1:]) if layer_name in parts[:-1] \
        else parts[-1]
