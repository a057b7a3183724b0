"""SavedModel for TF Serving: ``<dir>/<name>/<version>/`` with a named ``serving_default``
signature (logits, probabilities, label id) and the label map in ``assets/labels.txt``;
models whose clients send raw features (ids as strings) also get ``serving_raw``, which
looks them up inside the graph."""
import os
import tempfile

import tensorflow as tf

from tfdeploy.export import Format, next_version, register
from tfdeploy.rundir import atomic_dir


class ServingModule(tf.Module):
    def __init__(self, model, input_specs, labels_path, raw=None):
        super().__init__()
        # Track the weights, not the model: a compiled model drags its optimizer (and its
        # slot variables, 2x the weights for Adam) into the SavedModel.
        self.weights = list(model.weights)
        self.labels = tf.saved_model.Asset(labels_path)
        names = list(input_specs)

        @tf.function(input_signature=[input_specs[n] for n in names])
        def serve(*args):
            logits = tf.cast(model(dict(zip(names, args)), training=False), tf.float32)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits),
                    "label_id": tf.argmax(logits, axis=-1, output_type=tf.int32)}

        self.serve = serve
        self.raw = raw  # tracked: its lookup tables are saved with the model
        if raw is not None:
            raw_names = list(raw.specs)

            @tf.function(input_signature=[raw.specs[n] for n in raw_names])
            def serve_raw(*args):
                return serve(*[raw(dict(zip(raw_names, args)))[n] for n in names])

            self.serve_raw = serve_raw


@register
class SavedModelFormat(Format):
    name, runtime, is_float, order = "savedmodel", "tf", True, 0

    def write(self, job, path):
        return job.savedmodel()  # the one the TFLite formats convert from


def export(model, input_specs, label_names, root, name, version=0):
    """Write the SavedModel in TF Serving layout; return its path."""
    base = os.path.join(root, name)
    version = version or next_version(base)
    return write(model, input_specs, label_names, os.path.join(base, str(version)))


def write(model, input_specs, label_names, target, raw=None):
    """Write the SavedModel to ``target``, which appears atomically; return it. ``raw``:
    the model plugin's raw-feature lookups, saved as the ``serving_raw`` signature."""
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, "labels.txt")
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("\n".join(label_names) + "\n")
        module = ServingModule(model, input_specs, labels_path, raw)
        signatures = {"serving_default": module.serve}
        if raw is not None:
            signatures["serving_raw"] = module.serve_raw
        with atomic_dir(target) as tmp:
            tf.saved_model.save(module, tmp, signatures=signatures)
    return target


def input_specs(path):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return {name: (spec.shape.as_list(), spec.dtype.as_numpy_dtype)
            for name, spec in fn.structured_input_signature[1].items()}


def runner(path):
    """Callable: dict of numpy inputs -> logits, through the ``serving_default`` signature."""
    fn = tf.saved_model.load(path).signatures["serving_default"]

    def run(features):
        return fn(**{k: tf.constant(v) for k, v in features.items()})["logits"].numpy()

    return run
