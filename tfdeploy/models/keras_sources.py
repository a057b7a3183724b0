"""Where a ``type: keras`` model comes from: a tf-keras file, a Keras 3 file (rebuilt in
tf-keras by :mod:`tfdeploy.keras3`), or a SavedModel graph without Keras layers.

Each source builds the tf-keras model every stage starts from (logits out: a final
softmax is taken off), names its inputs and says whether anything can train it.
"""
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy import checkpoint, keras3
from tfdeploy.errors import CheckpointError
from tfdeploy.keras3 import files as keras3_files
from tfdeploy.models import graph_model

SUFFIXES = (".keras", ".h5", ".hdf5")
TOLERANCE = 1e-5  # the rebuilt model's largest output difference, per unit of output scale


def open_source(config, where, custom_objects, num_labels):
    """The source of the model ``config.path`` names (``num_labels`` picks a graph's
    output when it has several)."""
    path = config.path
    if not os.path.exists(path):
        raise CheckpointError(f"{where}: no such file or directory")
    if is_graph(path):
        return GraphSource(config, where, num_labels)
    if not os.path.isdir(path) and not path.endswith(SUFFIXES):
        raise CheckpointError(f"{where}: expected a .keras or .h5 file or a SavedModel "
                              f"directory")
    if os.path.isfile(path) and keras3_files.keras_version(path, where) >= 3:
        return Keras3Source(config, where, custom_objects, num_labels)
    return TfKerasSource(config, where, custom_objects)


class TfKerasSource:
    """A tf-keras model file or Keras SavedModel: loaded as it is."""

    trainable, refusal = True, None

    def __init__(self, config, where, custom_objects):
        self.config, self.where, self.custom_objects = config, where, custom_objects
        self.model = self.build()

    def inputs(self):
        return {name: (tuple(t.shape[1:]), t.dtype)
                for name, t in zip(self.model.input_names, self.model.inputs)}

    def output_shapes(self):
        return [tuple(t.shape) for t in self.model.outputs]

    def build(self):
        cfg = self.config
        return without_softmax(load(cfg.path, self.where, self.custom_objects, cfg.unsafe))

    def check(self, inputs):
        """Nothing to compare: the model is the user's own."""

    def describe(self):
        return {"source": "tf-keras"}


class Keras3Source:
    """A Keras 3 file, loaded by Keras 3 in safe mode and rebuilt in tf-keras; when the
    bridge cannot rebuild it, the Keras 3 model exported to a SavedModel (post-training
    path only)."""

    def __init__(self, config, where, custom_objects, num_labels):
        if not config.unsafe and not config.path.endswith(".keras"):
            checkpoint.refuse_stored_code(config.path, where)
        self.where = where
        self.model = keras3_files.load(config.path, where, custom_objects, config.unsafe)
        self.config, self.num_labels, self.difference, self.rows = config, num_labels, None, 0
        self._graph = None  # the exported SavedModel, made when first needed
        try:
            keras3.to_tf_keras(self.model, where)
            self.refusal = None
        except CheckpointError as e:
            self.refusal = str(e)

    @property
    def trainable(self):
        return self.refusal is None

    def inputs(self):
        return {t.name.split(":")[0]: (tuple(t.shape[1:]), tf.as_dtype(t.dtype))
                for t in self.model.inputs}

    def output_shapes(self):
        return [tuple(t.shape) for t in self.model.outputs]

    def build(self):
        if self.refusal:
            if self._graph is None:
                cfg = self.config
                self._graph = graph_model.load(keras3_files.exported(self.model), self.where,
                                               cfg.signature, cfg.output, self.num_labels)
            return self._graph
        return without_softmax(keras3.to_tf_keras(self.model, self.where))

    def check(self, inputs):
        """Refuse the rebuild unless it gives the Keras 3 model's outputs on ``inputs``."""
        if self.refusal:
            return
        rebuilt = keras3.to_tf_keras(self.model, self.where)
        self.difference = keras3.max_difference(self.model, rebuilt, inputs)
        self.rows = len(next(iter(inputs.values())))
        scale = max(1.0, max(float(np.max(np.abs(o))) for o in keras3.outputs(self.model,
                                                                              inputs)))
        if not self.difference <= TOLERANCE * scale:
            raise CheckpointError(f"{self.where}: the tf-keras rebuild's outputs differ from "
                                  f"the Keras 3 model's by {self.difference:.2e} on "
                                  f"{self.rows} training rows (tolerance "
                                  f"{TOLERANCE * scale:.0e})")
        print(f"model: Keras 3 file rebuilt in tf-keras ({len(rebuilt.layers)} layers); "
              f"outputs match to {self.difference:.1e} on {self.rows} training rows",
              flush=True)

    def describe(self):
        if self.refusal:
            return {"source": "Keras 3", "rebuilt": False, "why": self.refusal}
        return {"source": "Keras 3", "rebuilt": True, "max_difference": self.difference,
                "rows": self.rows}


class GraphSource:
    """A SavedModel without Keras metadata (Keras 3's ``model.export()``, a TF graph)."""

    trainable, refusal = False, None

    def __init__(self, config, where, num_labels):
        self.config, self.where, self.num_labels = config, where, num_labels
        self.model = self.build()

    inputs = TfKerasSource.inputs
    output_shapes = TfKerasSource.output_shapes
    check = TfKerasSource.check

    def build(self):
        cfg = self.config
        return graph_model.load(cfg.path, self.where, cfg.signature, cfg.output,
                                self.num_labels)

    def describe(self):
        return {"source": "SavedModel graph"}


def is_graph(path):
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "keras_metadata.pb"))


def load(path, where, custom_objects, unsafe):
    """The tf-keras model in ``path``, refusing stored code unless ``unsafe``."""
    if not unsafe and not path.endswith(".keras"):
        checkpoint.refuse_stored_code(path, where)
    options = {"safe_mode": not unsafe} if path.endswith(".keras") else {}
    try:
        with keras.utils.custom_object_scope(custom_objects):
            return keras.models.load_model(path, custom_objects=custom_objects, compile=False,
                                           **options)
    except (ValueError, TypeError, OSError, KeyError) as e:
        raise CheckpointError(f"{where}: cannot load the model: "
                              f"{keras3_files.first_line(e)}{keras3_files.hint(e)}") from None


def without_softmax(model):
    """``model`` with logits out: a final softmax (activation or layer) is taken off."""
    last = model.layers[-1]
    config = last.get_config()
    if isinstance(last, (keras.layers.Softmax,)) or (
            isinstance(last, keras.layers.Activation) and config.get("activation") == "softmax"):
        return keras.Model(model.inputs, last.input, name=model.name)
    if config.get("activation") == "softmax":
        def linear(layer):
            cfg = layer.get_config()
            if layer is last:
                cfg["activation"] = "linear"
            return layer.__class__.from_config(cfg)

        logits = keras.models.clone_model(model, clone_function=linear)
        logits.set_weights(model.get_weights())
        return logits
    return model
