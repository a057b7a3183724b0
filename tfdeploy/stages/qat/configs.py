"""The QuantizeConfigs the qat stage adds to TFMOT's: per-tensor conv weights, an
output quantizer alone (a layer feeding a quantized one), int8 weights with a float output
(embedding tables)."""
import tensorflow_model_optimization as tfmot
import tf_keras as keras

def _no_op_config():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_configs

    return default_8bit_quantize_configs.NoOpQuantizeConfig


def per_tensor_quantizer(quantizer):
    """The per-tensor sibling of a scheme's per-channel conv weight quantizer (the same
    sparsity or cluster preservation), or ``quantizer`` when it is per tensor already."""
    import importlib

    keras_q = "tensorflow_model_optimization.python.core.quantization.keras."
    cluster = importlib.import_module(
        keras_q + "collab_opts.cluster_preserve.cluster_preserve_quantize_registry")
    prune = importlib.import_module(
        keras_q + "collab_opts.prune_preserve.prune_preserve_quantize_registry")
    default = importlib.import_module(keras_q + "default_8bit.default_8bit_quantizers")
    if isinstance(quantizer, cluster.ClusterPreserveDefault8BitConvWeightsQuantizer):
        return cluster.ClusterPreserveDefault8BitWeightsQuantizer(quantizer.preserve_sparsity)
    if isinstance(quantizer, prune.PrunePreserveDefault8BitConvWeightsQuantizer):
        return prune.PrunePreserveDefault8BitWeightsQuantizer()
    if isinstance(quantizer, default.Default8BitConvWeightsQuantizer):
        return tfmot.quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
    return quantizer


@keras.utils.register_keras_serializable(package="tfdeploy")
class PerTensorWeights(tfmot.quantization.keras.QuantizeConfig):
    """A scheme's layer config with its conv weight quantizer made per tensor. Saved as
    itself, so a reloaded model builds per-tensor ranges again (the inner config alone
    would build per-channel ones, and its saved ranges would not load)."""

    def __init__(self, config):
        if isinstance(config, dict):
            config = keras.utils.deserialize_keras_object(config)
        config.weight_quantizer = per_tensor_quantizer(config.weight_quantizer)
        self.config = config

    def get_weights_and_quantizers(self, layer):
        return self.config.get_weights_and_quantizers(layer)

    def get_activations_and_quantizers(self, layer):
        return self.config.get_activations_and_quantizers(layer)

    def set_quantize_weights(self, layer, quantize_weights):
        self.config.set_quantize_weights(layer, quantize_weights)

    def set_quantize_activations(self, layer, quantize_activations):
        self.config.set_quantize_activations(layer, quantize_activations)

    def get_output_quantizers(self, layer):
        return self.config.get_output_quantizers(layer)

    def get_config(self):
        return {"config": keras.utils.serialize_keras_object(self.config)}


@keras.utils.register_keras_serializable(package="tfdeploy")
class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Compute in float, fake-quantize the output (8-bit, asymmetric).

    Put on every layer that feeds a quantized Dense (LayerNorm, attention, GELU, pooling,
    dropout): without a quantized input the converter keeps the matmul in float.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


@keras.utils.register_keras_serializable(package="tfdeploy")
class WeightOnlyQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """int8 (symmetric, per-tensor) weights, float output: for embedding tables, whose
    gather the converter then runs on int8 rows."""

    def __init__(self, attr="embeddings"):
        self.attr = attr
        self.quantizer = tfmot.quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, self.attr), self.quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.attr, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"attr": self.attr}
