"""`tflite_int16x8`: int8 weights with int16 activations (TFLite's 16x8 quantization).

Activations keep 256 times the resolution of full int8, which helps models whose
activations span a wide range (attention scores, a ranker's cross features), while the
weights are as small as int8's. LiteRT runs it with its reference int16 kernels: it is
for accuracy-bound deployments and for hardware with 16x8 kernels, not for x86 speed.
Ranges are calibrated on training rows, as for ``tflite_int8``.
"""
import tensorflow as tf

from tfdeploy.export import Format, register
from tfdeploy.export.tflite import weight_stats
from tfdeploy.rundir import atomic_write_bytes


# Ops the converter quantizes to int16 but LiteRT has no int16 kernel for (a BERT's
# LayerNorm variance): they stay float.
FLOAT_OPS = ("SQUARED_DIFFERENCE",)


@register
class Int16x8(Format):
    name, runtime, suffix, order = "tflite_int16x8", "litert", ".tflite", 14

    def refuses(self, traits):
        if traits.quantization_aware:
            return ("a quantization-aware model carries int8 activation ranges; it converts "
                    "to tflite_int8")
        return None

    def dry_run(self, model, recipe):
        return (f"{self.name} (TFLite converter): weights int8, activations int16, ranges "
                f"calibrated on {recipe.export.calibration_examples} training rows",)

    def write(self, job, path):
        converter = tf.lite.TFLiteConverter.from_saved_model(job.savedmodel(),
                                                             ["serving_default"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = job.representative()
        # An op without a 16x8 kernel (the signature's ARG_MAX) stays float beside them.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS]
        # The converter takes no list of ops to keep float; its quantization debugger does.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=job.representative(),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(FLOAT_OPS)))
        atomic_write_bytes(path, debugger.get_nondebug_quantized_model())
        return path

    def weight_sparsity(self, path):
        return weight_stats(path)["sparsity"]
