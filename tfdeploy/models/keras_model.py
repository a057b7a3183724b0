"""`type: keras`: the user's own trained tf-keras model, from ``.keras``, ``.h5`` or a
Keras SavedModel directory, or any SavedModel with a serving signature (Keras 3's
``model.export()``, a TF graph): that one is post-training only (``graph_model``).

Loading never runs code from the file unless the recipe says ``unsafe: true``: ``.keras``
loads with Keras' ``safe_mode``; ``.h5`` and SavedModel files are read first and refused
when they hold a ``Lambda`` layer (its Python code would run). Custom layer classes come
only from ``custom_objects: [module.Class]``, imported because the recipe names them.
The model's inputs and outputs come from the model; the task (classes, labels) from the
data section. A final softmax is taken off, so every stage trains and distils on logits;
the SavedModel's signature still returns probabilities beside them.
"""
import dataclasses
import importlib
import os
from typing import List

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy import checkpoint
from tfdeploy.errors import CheckpointError
from tfdeploy.models import MODELS, ModelPlugin, graph_model
from tfdeploy.recipe.fields import ModelConfig, field

SUFFIXES = (".keras", ".h5", ".hdf5")


@MODELS.register("keras")
class KerasModel(ModelPlugin):
    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        path: str = field(doc="The trained tf-keras model: a .keras or .h5 file, or a "
                              "SavedModel directory (a non-Keras one: export stages only).")
        custom_objects: List[str] = field(factory=list, doc="Custom layer classes as "
                                                            "module.Class; imported (their "
                                                            "code runs) because listed here.")
        unsafe: bool = field(False, doc="Allow Lambda layers and other code stored in the "
                                        "file. Only for files you trust.")
        signature: str = field("serving_default", doc="For a SavedModel that is not a "
                                                      "tf-keras model: the signature to run.")
        output: str = field("", doc="For such a SavedModel: the signature output holding "
                                    "one value per class, when it has several.")

        def check(self):
            for i, spec in enumerate(self.custom_objects):
                if "." not in spec.strip("."):
                    yield (("custom_objects", i), f"{spec!r} is not module.Class")

    def __init__(self, config, num_labels):
        super().__init__(config, num_labels)
        self._where = f"model.path {config.path}"
        model = self.build()
        if len(model.inputs) != 1:
            raise CheckpointError(f"{self._where}: the model has {len(model.inputs)} inputs; "
                                  f"type keras takes single-input models (numpy or images "
                                  f"data feed one array)")
        width = model.outputs[0].shape[-1]
        if len(model.outputs) != 1 or width != num_labels:
            raise CheckpointError(f"{self._where}: the model outputs {width} values per "
                                  f"example but the data has {num_labels} classes")
        tensor = model.inputs[0]
        self.input_name = model.input_names[0]
        self.input_shape = tuple(tensor.shape[1:])
        self.input_dtype = tensor.dtype

    @property
    def trainable(self):
        """A SavedModel without Keras metadata is a graph: nothing can train it."""
        return not is_graph(self.config.path)

    def build(self):
        cfg = self.config
        if is_graph(cfg.path):
            return graph_model.load(cfg.path, self._where, cfg.signature, cfg.output,
                                    self.num_labels)
        model = load(cfg.path, self._where, self.custom_objects(), cfg.unsafe)
        return without_softmax(model)

    def custom_objects(self):
        return import_classes(self.config.custom_objects, self._where)

    def files(self):
        path = self.config.path
        if os.path.isdir(path):
            return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
        return [path]

    def encode(self, examples, max_length=None):
        array = np.asarray(examples).astype(self.input_dtype.as_numpy_dtype)
        return {self.input_name: array.reshape((-1, *self.input_shape))}

    def input_specs(self):
        return {self.input_name: tf.TensorSpec([None, *self.input_shape], self.input_dtype,
                                               name=self.input_name)}

    def synthetic_inputs(self, batch, seq_length=None, seed=0):
        rng = np.random.default_rng(seed)
        shape = (batch, *self.input_shape)
        return {self.input_name: rng.random(shape).astype(self.input_dtype.as_numpy_dtype)}


def is_graph(path):
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "keras_metadata.pb"))


def load(path, where, custom_objects, unsafe):
    """The model in ``path``, refusing stored code unless ``unsafe``."""
    if not os.path.exists(path):
        raise CheckpointError(f"{where}: no such file or directory")
    if os.path.isdir(path):
        kind = "SavedModel"
    elif path.endswith(SUFFIXES):
        kind = "keras" if path.endswith(".keras") else "h5"
    else:
        raise CheckpointError(f"{where}: expected a .keras or .h5 file or a SavedModel "
                              f"directory")
    if not unsafe and kind != "keras":
        checkpoint.refuse_stored_code(path, where)
    options = {"safe_mode": not unsafe} if kind == "keras" else {}
    try:
        with keras.utils.custom_object_scope(custom_objects):
            return keras.models.load_model(path, custom_objects=custom_objects, compile=False,
                                           **options)
    except (ValueError, TypeError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (set unsafe: true only for a file you trust)" if "safe_mode" in str(e) else \
            " (custom layers: list them in model.custom_objects)" if "Unknown" in str(e) \
            else ""
        raise CheckpointError(f"{where}: cannot load the model: {first}{hint}") from None


def import_classes(specs, where):
    found = {}
    for spec in specs:
        module_name, _, name = spec.rpartition(".")
        try:
            found[name] = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as e:
            raise CheckpointError(f"{where}: custom object {spec!r} cannot be imported "
                                  f"({e})") from None
    return found


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
