"""Int8 embedding tables with one scale per row, for models whose bytes sit in their tables
(recommenders; BERT's word embeddings too).

Every ``keras.layers.Embedding`` of the model is replaced by :class:`Int8Embedding`: the
table stored as int8 (symmetric, ``scale = max |row| / 127`` per row, so a rare row with
small values keeps its precision) and the lookup reads int8 rows, then scales them:
``cast(gather(table, ids)) * gather(scales, ids)``. The gather indices are inputs, so no
converter can fold the int8 table back into float. The dense part (cross and tower
layers) then gets each runtime's dynamic-range int8 (int8 weights, activations quantized
on the fly), as in ``tflite_dynamic_int8`` / ``onnx_int8``, whose gathers use one scale
per table instead. ``tflite_int8_embeddings`` runs in LiteRT, ``onnx_int8_embeddings`` in
ONNX Runtime.
"""
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy.errors import StageError
from tfdeploy.export import Format, register


class Int8Embedding(keras.layers.Layer):
    """An embedding lookup from an int8 table with per-row float scales."""

    def __init__(self, table, scales, **kwargs):
        super().__init__(**kwargs)
        self.table = tf.constant(table, tf.int8)
        self.scales = tf.constant(scales[:, None], tf.float32)

    def call(self, ids):
        ids = tf.cast(ids, tf.int32)
        return tf.cast(tf.gather(self.table, ids), tf.float32) * tf.gather(self.scales, ids)


def quantize_rows(table):
    """(int8 table, float32 per-row scales): symmetric, round to nearest."""
    scales = np.max(np.abs(table), axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    return np.clip(np.round(table / scales[:, None]), -127, 127).astype(np.int8), scales


def refusal(traits):
    if traits.quantization_aware:
        return ("a quantization-aware model's tables are already int8 in its own "
                "conversion (tflite_int8); export that instead")
    return None


def with_int8_tables(model, traits):
    """A copy of ``model`` whose Embedding layers read int8 rows; the other weights copied."""
    why = refusal(traits)
    if why:
        raise StageError(f"int8 embeddings: {why}")
    tables = {layer.name for layer in model.layers
              if isinstance(layer, keras.layers.Embedding)}
    if not tables:
        raise StageError(f"int8 embeddings: model {model.name} has no keras Embedding layer")

    def clone(layer):
        if layer.name in tables:
            q, scales = quantize_rows(layer.get_weights()[0])
            return Int8Embedding(q, scales, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name not in tables and layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


class Int8EmbeddingFormat(Format):
    """Shared: the int8-table copy of the job's model, made once."""

    def refuses(self, traits):
        return refusal(traits)

    def int8_model(self, job):
        return job.once("int8_embeddings", lambda: with_int8_tables(job.model, job.traits))


@register
class TFLiteInt8Embeddings(Int8EmbeddingFormat):
    name, runtime, suffix, order = "tflite_int8_embeddings", "litert", ".tflite", 14

    def write(self, job, path):
        from tfdeploy.export import savedmodel, tflite

        with tempfile.TemporaryDirectory() as scratch:
            saved = savedmodel.write(self.int8_model(job), job.context.plugin.input_specs(),
                                     job.context.task.label_names,
                                     os.path.join(scratch, "savedmodel"),
                                     objective=job.converted_objective())
            return tflite.export(saved, "tflite_dynamic_int8", path)


@register
class ONNXInt8Embeddings(Int8EmbeddingFormat):
    name, runtime, suffix, order = "onnx_int8_embeddings", "onnxruntime", ".onnx", 23

    def write(self, job, path):
        from tfdeploy.export import onnx

        with tempfile.TemporaryDirectory() as scratch:
            tables = onnx.write_fp32(self.int8_model(job), job.context.plugin.input_specs(),
                                     os.path.join(scratch, "tables.onnx"),
                                     job.recipe.export.opset)
            return onnx.quantize(tables, path)  # int8 tables are left as they are
