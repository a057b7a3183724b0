"""`qat`: quantization-aware training (8-bit), transformer-aware and collaborative.

TFMOT's default scheme quantizes whole models of known layers; a BERT also holds
LayerNorm, softmax and GELU, which have no int8 QuantizeConfig and lose accuracy when
quantized. Our BERT keeps every matmul weight (Q/K/V/output projections, both FFN
matrices, the classifier) in its own ``Dense`` layer, so the stage annotates exactly those
and leaves LayerNorm, softmax and GELU in float; the TFLite converter then emits int8
fully-connected ops with the learned ranges. Embedding tables get int8 weights and a float
output (the int8 file gathers int8 rows). A Dense whose output a layer multiplies with float
activations (attention's V, declared by the layer's ``float_inputs``) keeps int8 weights but
a float output: an int8 V makes the converter emit an int8 BATCH_MATMUL, which XNNPACK does
not run (it measured 1.8x the dynamic-range model's latency).

After ``prune`` the prune-preserving scheme keeps the zeros; after ``cluster`` the
cluster-preserving one keeps the shared values; after both, the sparsity-and-cluster
preserving one. The stage checks afterwards that the structure survived.
"""
import copy
import dataclasses
import os
import tempfile
from typing import List, Literal

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.selection import LayerSelection, chosen, main_weight, plan
from tfdeploy.stages import STAGES, Stage
from tfdeploy.stages.fold_bn import fold_batch_norms
from tfdeploy.training import FitConfig, fit
from tfdeploy.traits import StageResult

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


def calibrate_ranges(quantized, float_model, context, batch_size, batches=16):
    """Activation ranges from the float model on ``batches`` training batches."""
    from tfdeploy.stages import qat_ranges

    data = context.train.train_dataset(batch_size, context.seed).take(batches)
    chosen = qat_ranges.calibrate(quantized, float_model, (x for x, _ in data))
    print(f"  calibrated {len(chosen)} activation ranges on {batches} training batches",
          flush=True)
    return chosen


@STAGES.register("qat")
class QAT(Stage):
    tpu_unsupported = ("TFMOT 0.8.1 supports quantization-aware training on CPU/GPU only (no TPU "
                       "support documented or tested)")
    # 1: pass-through layers after a clustered model's last ReLU got no output quantizer
    # (its reused layers were read as having two inputs), so ORT ran that conv float
    revision = 1

    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig, LayerSelection):
        """Quantization-aware fine-tuning. Fit fields (epochs, learning_rate, ...) as in
        train."""

        scheme: Literal[SCHEMES] = field(
            "auto", doc="auto: default 8-bit, or the prune/cluster/sparsity-and-cluster "
                        "preserving scheme after prune and/or cluster stages.")
        learning_rate: float = field(2e-5, gt=0, doc="Peak learning rate.")
        min_weights: int = field(0, ge=0, doc="Skip layers whose main weight has fewer "
                                              "elements (default: quantize every matmul).")
        alpha: float = field(1.0, ge=0, le=1, doc="Weight of the label cross-entropy; 1 - "
                                                  "alpha weighs a KL to the float model "
                                                  "entering the stage (self-distillation: "
                                                  "keeps the int8 model close to it).")
        temperature: float = field(1.0, gt=0, doc="Softmax temperature of that KL term.")
        teacher: str = field("previous", doc="The model of that KL: 'previous' (the float "
                                             "model entering the stage), an earlier stage's "
                                             "name (e.g. finetune: the dense model before "
                                             "pruning) or a saved stage directory.")
        ranges: Literal["ema", "calibrated"] = field(
            "ema", doc="Activation ranges at the start: ema = TFMOT's [-6, 6], moved 0.1% "
                       "per step toward each batch's; calibrated = measured first on training "
                       "batches with the float model (for activations far outside [-6, 6], "
                       "e.g. a ranker's cross network).")
        granularity: Literal["per_channel", "per_tensor"] = field(
            "per_channel", doc="Conv weight scales: one per output channel (TFMOT's "
                               "default), or one per tensor (a smaller int8 file; see "
                               "export.int8_granularity). Dense weights are per tensor in "
                               "both.")
        weights_before_relu: Literal["quantized", "float"] = field(
            "quantized", doc="A conv or Dense followed by a quantized ReLU: quantized = its "
                             "weights train fake-quantized like any other layer's; float = "
                             "TFMOT's own LayerReLUQuantize behaviour: they train float and "
                             "the converter quantizes them afterwards, per channel.")
        layer_types: List[Literal["dense", "conv", "embedding"]] = field(
            factory=lambda: ["dense", "conv", "embedding"],
            doc="Kinds of layers quantized (embedding: int8 table, float output).")

    def preflight(self, model, context):
        name, _ = scheme_for(self.config.scheme, context.traits)
        float_out = float_outputs(model)

        def what(layer):
            if isinstance(layer, keras.layers.Embedding):
                return "int8 table, float output"
            if layer.name in float_out:
                return f"int8 weights, float output: read by a float matmul ({name})"
            return f"int8 weights + activations ({name})"
        return [(l.name, what(l) if ok else reason)
                for l, ok, reason in plan(model, self.config)] + [
            ("(LayerNorm, softmax, GELU)", "stay float: no int8 config keeps their accuracy")]

    def wrapped_layers(self, model, context):
        names = [l.name for l, ok, _ in plan(model, self.config) if ok]
        return names + sorted(feeders(model, names))  # feeders get an output quantizer

    def teacher_spec(self):
        return self.config.teacher if self.config.alpha < 1 else None

    def plain_model(self, model):
        from tfdeploy.stages.qat_float import float_model

        return float_model(model, self.load_scopes()[0])

    @classmethod
    def load_scopes(cls):
        def scope():
            return tfmot.quantization.keras.quantize_scope(
                {"OutputQuantizeConfig": OutputQuantizeConfig,
                 "WeightOnlyQuantizeConfig": WeightOnlyQuantizeConfig,
                 "PerTensorWeights": PerTensorWeights})
        return [scope]

    def run(self, model, context):
        cfg = self.config
        with context.strategy.scope():
            model = context.plugin.current_graph(model)
            entering = model
            model, folded = fold_batch_norms(model)
        if folded:
            print(f"  folded {len(folded)} batch norms into their convs", flush=True)
        names = chosen(model, cfg, "qat")
        inputs = feeders(model, names)
        scheme_name, scheme = scheme_for(cfg.scheme, context.traits, float_outputs(model),
                                         cfg.granularity == "per_tensor",
                                         cfg.weights_before_relu == "quantized")
        before = keras_structure(entering, names)  # zeros and clusters as they were trained
        print(f"  quantizing {len(names)} layers, scheme {scheme_name}", flush=True)

        def annotate(layer):
            if isinstance(layer, keras.layers.Embedding) and layer.name in names:
                return tfmot.quantization.keras.quantize_annotate_layer(
                    layer, quantize_config=WeightOnlyQuantizeConfig())
            # No ReLU beyond ``inputs``: TFMOT's LayerReLUQuantize gives the conv before an
            # annotated ReLU a no-op config (float weights, zeros no longer kept).
            if layer.name in names:  # config from the scheme's registry (see _Registry)
                return tfmot.quantization.keras.quantize_annotate_layer(layer)
            if layer.name in inputs:
                return tfmot.quantization.keras.quantize_annotate_layer(
                    layer, quantize_config=OutputQuantizeConfig())
            return layer

        with context.strategy.scope(), self.load_scopes()[0](), \
                keras.utils.custom_object_scope(context.plugin.custom_objects()):
            annotated = keras.models.clone_model(model, clone_function=annotate)
            quantized = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        report = {"scheme": scheme_name, "layers": len(names), "folded_batch_norms": folded}
        if cfg.ranges == "calibrated":
            with context.strategy.scope(), \
                    keras.utils.custom_object_scope(context.plugin.custom_objects()):
                report["calibrated_ranges"] = calibrate_ranges(quantized, model, context,
                                                               cfg.batch_size)
        if cfg.alpha < 1:  # distillation, by default from the float model entering the stage
            from tfdeploy.distillation import fit_distilled, kl_first_last
            from tfdeploy.stages.teacher import load_teacher

            teacher = load_teacher(cfg.teacher, model, context, "qat")
            history = fit_distilled(quantized, teacher, context, cfg)
            report["kl_to_teacher"] = kl_first_last(history)
        else:
            fit(quantized, context, cfg)
        if scheme_name != "default":
            report.update(self.verify(scheme_name, before, tflite_structure(quantized, context),
                                      context.traits.clusters))
        return StageResult(quantized, self.planned_traits(context.traits), report)

    def planned_traits(self, entering):
        name, _ = scheme_for(self.config.scheme, entering)
        return dataclasses.replace(entering, quantization_aware=name)

    def verify(self, scheme, before, after, clusters=0):
        """The preserved structure must survive into the int8 weights; fail if not.
        ``clusters``: values per clustered kernel (a kept zero may add one)."""
        lost, zeros_before, zeros_after = [], 0, 0
        for shape, (zeros, unique) in before.items():
            if shape not in after:
                continue
            got_zeros, got_unique = after[shape]
            zeros_before, zeros_after = zeros_before + zeros, zeros_after + got_zeros
            if "prune" in scheme or scheme == "sparsity_cluster_preserve":
                if got_zeros < 0.99 * zeros:
                    lost.append(f"weights {shape}: {zeros} zeros -> {got_zeros}")
            if "cluster" in scheme and got_unique > unique:
                lost.append(f"weights {shape}: {unique} values -> {got_unique} per channel")
        if lost:
            raise StageError(f"qat ({scheme}) did not preserve the structure in the int8 "
                             f"weights: " + "; ".join(lost))
        report = {"int8_zeros": {"before": zeros_before, "after": zeros_after}}
        if "cluster" in scheme:
            clustered = [after[k][1] for k, (_, u) in before.items()
                         if k in after and u <= clusters + 1]
            report["int8_max_values_per_channel"] = max(clustered, default=0)
            report["clustered_kernels"] = len(clustered)
        return report
