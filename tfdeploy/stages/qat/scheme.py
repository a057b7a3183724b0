"""The quantization scheme a qat stage applies: TFMOT's (default 8-bit, or the prune /
cluster / sparsity-and-cluster preserving one after those stages), its registry and layout
transform wrapped with the fixes each docstring names."""
import copy

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfdeploy.stages.qat.configs import PerTensorWeights, _no_op_config

SCHEMES = ("auto", "default", "prune_preserve", "cluster_preserve",
           "sparsity_cluster_preserve")


class _Registry(tfmot.quantization.keras.QuantizeRegistry):
    """The scheme's registry, with three fixes:

    - ``supports`` asks the real question: TFMOT's collaborative registries claim to support
      layers they then refuse (e.g. our weightless pooling layer feeding a quantized input);
    - every layer gets a weight quantizer of its own: the collaborative registries hand all
      layers one quantizer object, and the cluster-preserving one switches its
      ``preserve_sparsity`` off for good when it builds a layer without zeros (the unpruned
      classifier), so every layer built later lost its zeros in PCQAT;
    - layers named in ``float_outputs`` lose the activation quantizer on their output;
    - with ``per_tensor``, conv weights get the scheme's own per-tensor quantizer
      (:class:`PerTensorWeights`; TFMOT's ``disable_per_axis`` exists for the default
      scheme only).

    Configs are made here, when ``quantize_apply`` asks, not passed to
    ``quantize_annotate_layer``: TFMOT clones the annotated model through its config, which
    would drop the quantizer objects."""

    def __init__(self, inner, float_outputs=(), per_tensor=False):
        self.inner, self.float_outputs, self.per_tensor = inner, set(float_outputs), per_tensor

    def supports(self, layer):
        try:
            self.inner.get_quantize_config(layer)
            return True
        except (ValueError, KeyError):
            return False

    def get_quantize_config(self, layer, float_output=False):
        config = copy.copy(self.inner.get_quantize_config(layer))
        if float_output or layer.name in self.float_outputs:
            config.activation_attrs = []
        if hasattr(config, "weight_quantizer"):
            config.weight_quantizer = copy.deepcopy(config.weight_quantizer)
            if self.per_tensor:
                return PerTensorWeights(config)
        return config

    def weights_only(self, layer):
        """The layer's config with its weights quantized and its output float; None for a
        layer without weights to quantize."""
        if not self.supports(layer):
            return None
        config = self.get_quantize_config(layer, float_output=True)
        return config if config.get_weights_and_quantizers(layer) else None


class _Layout(tfmot.quantization.keras.QuantizeLayoutTransform):
    """The scheme's layout transform, with two fixes:

    - TFMOT puts a QuantizeLayer after every model input feeding a quantized layer; on the
      int32 token ids an embedding reads that breaks the model. Integer inputs stay as
      they are.
    - TFMOT's ``LayerReLUQuantize`` gives a Conv2D, DepthwiseConv2D or Dense followed by a
      quantized ReLU a no-op config, so that no quantizer sits between the two; but that
      also leaves the layer's weights float (the converter then quantizes them itself, per
      channel whatever the stage's granularity). Such a layer gets the registry's config
      without its activation quantizer: weights quantized, the output left to the ReLU."""

    def __init__(self, inner, registry=None):
        self.inner, self.registry = inner, registry  # None: TFMOT's no-op configs stay

    def apply(self, model, layer_quantize_map):
        ids = {l.name for l in model.layers if isinstance(l, keras.layers.InputLayer)
               and not l.dtype.startswith("float")}
        transformed, quantize_map = self.inner.apply(
            model, {k: v for k, v in layer_quantize_map.items() if k not in ids})
        for name, entry in quantize_map.items() if self.registry else ():
            if isinstance(entry.get("quantize_config"), _no_op_config()):
                config = self.registry.weights_only(transformed.get_layer(name))
                if config is not None:
                    entry["quantize_config"] = config
        return transformed, quantize_map


class _Scheme(tfmot.quantization.keras.QuantizeScheme):
    def __init__(self, inner, float_outputs=(), per_tensor=False, relu_weights=True):
        self.inner, self.float_outputs, self.per_tensor = inner, float_outputs, per_tensor
        self.relu_weights = relu_weights

    def get_layout_transformer(self):
        return _Layout(self.inner.get_layout_transformer(),
                       self.get_quantize_registry() if self.relu_weights else None)

    def get_quantize_registry(self):
        return _Registry(self.inner.get_quantize_registry(), self.float_outputs,
                         self.per_tensor)


def scheme_for(name, traits, float_outputs=(), per_tensor=False, relu_weights=True):
    """The TFMOT scheme; ``auto`` picks it from what earlier stages did to the model.
    ``relu_weights``: quantize the weights of a layer followed by a quantized ReLU."""
    if name == "auto":
        pruned, clustered = traits.sparse, traits.clustered
        name = ("sparsity_cluster_preserve" if pruned and clustered else
                "cluster_preserve" if clustered else "prune_preserve" if pruned else "default")
    combine = tfmot.experimental.combine
    schemes = {
        "default": tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme,
        "prune_preserve": combine.Default8BitPrunePreserveQuantizeScheme,
        "cluster_preserve": lambda: combine.Default8BitClusterPreserveQuantizeScheme(False),
        "sparsity_cluster_preserve":
            lambda: combine.Default8BitClusterPreserveQuantizeScheme(True),
    }
    return name, _Scheme(schemes[name](), float_outputs, per_tensor, relu_weights)
