"""The ``qat`` stage: annotate, apply the scheme, train, verify."""
import dataclasses
from typing import List, Literal

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfdeploy.distillation import fit_maybe_distilled
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.selection import LayerSelection, chosen, plan
from tfdeploy.stages import STAGES, Stage
from tfdeploy.stages.fold_bn import fold_batch_norms
from tfdeploy.stages.qat.configs import (OutputQuantizeConfig, PerTensorWeights,
                                         WeightOnlyQuantizeConfig)
from tfdeploy.stages.qat.graph import feeders, float_outputs
from tfdeploy.stages.qat.ranges import calibrate_ranges
from tfdeploy.stages.qat.scheme import SCHEMES, scheme_for
from tfdeploy.stages.qat.structure import keras_structure, tflite_structure
from tfdeploy.stages.teacher import Distillation, DistillingStage
from tfdeploy.training import FitConfig
from tfdeploy.traits import StageResult

@STAGES.register("qat")
class QAT(DistillingStage, Stage):
    tpu_unsupported = ("TFMOT 0.8.1 supports quantization-aware training on CPU/GPU only (no TPU "
                       "support documented or tested)")
    # 1: pass-through layers after a clustered model's last ReLU got no output quantizer
    # (its reused layers were read as having two inputs), so ORT ran that conv float
    revision = 1

    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig, LayerSelection, Distillation):
        """Quantization-aware fine-tuning. Fit fields (epochs, learning_rate, ...) as in
        train; with alpha < 1 it also learns from a teacher (by default the float model
        entering the stage: keeps the int8 model close to it)."""

        scheme: Literal[SCHEMES] = field(
            "auto", doc="auto: default 8-bit, or the prune/cluster/sparsity-and-cluster "
                        "preserving scheme after prune and/or cluster stages.")
        learning_rate: float = field(2e-5, gt=0, doc="Peak learning rate.")
        min_weights: int = field(0, ge=0, doc="Skip layers whose main weight has fewer "
                                              "elements (default: quantize every matmul).")
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

        def check(self):
            yield from LayerSelection.check(self)
            yield from Distillation.check(self)

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

    def plain_model(self, model):
        from tfdeploy.stages.qat.float_model import float_model

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
        report.update(fit_maybe_distilled(quantized, model, context, cfg, "qat"))
        if scheme_name != "default":
            report.update(self.verify(scheme_name, before, tflite_structure(quantized, context),
                                      context.traits.clusters))
        return StageResult(quantized, self.planned_traits(context.traits), report)

    def planned_traits(self, entering):
        name, _ = scheme_for(self.config.scheme, entering)
        return self.config.seen(dataclasses.replace(entering, quantization_aware=name))

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
