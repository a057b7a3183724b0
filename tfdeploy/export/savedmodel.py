"""SavedModel for TF Serving: ``<dir>/<name>/<version>/`` with a named ``serving_default``
signature (the task objective's outputs: logits, probabilities and label id for classes)
and the label map in ``assets/labels.txt``. For models whose clients send raw features
(ids as strings), ``serving_default`` takes those and looks them up inside the graph, and
``serving_ids`` takes the model's own inputs."""
import json
import os
import tempfile

import tensorflow as tf

from tfdeploy import objectives
from tfdeploy.export import Format, register
from tfdeploy.export.runtime import register_runtime
from tfdeploy.publish import next_version
from tfdeploy.rundir import atomic_dir

DEFAULT, IDS = "serving_default", "serving_ids"
FEATURES = "features.json"  # in assets/: how raw features become the model's inputs


class ServingModule(tf.Module):
    """``serve``: the model's inputs -> the objective's outputs (logits, probabilities and
    label id for classes; a rating; a click logit and probability). With ``raw`` (the
    model plugin's lookups) also ``serve_raw``: raw features -> the same outputs."""

    def __init__(self, model, input_specs, labels_path, raw=None,
                 objective=objectives.CLASSIFICATION):
        super().__init__()
        # Track the weights, not the model: a compiled model drags its optimizer (and its
        # slot variables, 2x the weights for Adam) into the SavedModel.
        self.weights = list(model.weights)
        self.labels = tf.saved_model.Asset(labels_path)
        names = list(input_specs)

        @tf.function(input_signature=[input_specs[n] for n in names])
        def serve(*args):
            logits = tf.cast(model(dict(zip(names, args)), training=False), tf.float32)
            if objective is None:  # what the converters read: the model's outputs only
                return {"logits": logits}
            return objective.outputs(logits, objectives.TFOps)

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
        return job.serving_savedmodel()


def export(model, input_specs, label_names, root, name, version=0):
    """Write the SavedModel in TF Serving layout; return its path."""
    base = os.path.join(root, name)
    version = version or next_version(base)
    return write(model, input_specs, label_names, os.path.join(base, str(version)))


def write(model, input_specs, label_names, target, raw=None,
          objective=objectives.CLASSIFICATION, features=None):
    """Write the SavedModel to ``target``, which appears atomically; return it. With
    ``raw`` (the model plugin's raw-feature lookups) ``serving_default`` takes raw features
    and ``serving_ids`` the model's own inputs; ``features`` (the same lookups described
    for servers, :mod:`tfdeploy.serve.features`) is kept as ``assets/features.json``."""
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, "labels.txt")
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("\n".join(label_names) + "\n")
        module = ServingModule(model, input_specs, labels_path, raw, objective)
        if features is not None:
            features_path = os.path.join(scratch, FEATURES)
            with open(features_path, "w", encoding="utf-8") as f:
                json.dump(features, f)
            module.features = tf.saved_model.Asset(features_path)
        signatures = {DEFAULT: module.serve}
        if raw is not None:
            signatures = {DEFAULT: module.serve_raw, IDS: module.serve}
        with atomic_dir(target) as tmp:
            tf.saved_model.save(module, tmp, signatures=signatures)
    return target


def model_signature(path):
    """The signature that takes the model's own inputs (``serving_ids`` when
    ``serving_default`` takes raw features)."""
    signatures = tf.saved_model.load(path).signatures
    return signatures[IDS] if IDS in signatures else signatures[DEFAULT]


def input_specs(path):
    fn = model_signature(path)
    return {name: (spec.shape.as_list(), spec.dtype.as_numpy_dtype)
            for name, spec in fn.structured_input_signature[1].items()}


def runner(path):
    """Callable: dict of numpy model inputs -> the model's raw outputs [N, width]."""
    fn = model_signature(path)

    def run(features):
        out = fn(**{k: tf.constant(v) for k, v in features.items()})
        raw = next(out[o.raw_output] for o in objectives.OBJECTIVES.values()
                   if o.raw_output in out).numpy()
        return raw if raw.ndim == 2 else raw.reshape(-1, 1)

    return run


register_runtime("tf", lambda path: os.path.isfile(os.path.join(path, "saved_model.pb")),
                 lambda path, threads=2: runner(path), input_specs)
