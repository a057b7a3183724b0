"""`type: keras`: the user's own trained model: a Keras 3 or tf-keras ``.keras`` or ``.h5``
file, a tf-keras SavedModel directory, or any SavedModel with a serving signature (Keras
3's ``model.export()``, a TF graph; that one is post-training only).

A Keras 3 model is rebuilt in tf-keras (:mod:`tfdeploy.keras3`) and checked on real
training rows before any stage; one the bridge cannot rebuild takes the post-training path
(exported to a SavedModel in-process). Each stage's model goes back to Keras 3 too.

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
from typing import Dict, List

import numpy as np
import tensorflow as tf

from tfdeploy import keras3
from tfdeploy.errors import CheckpointError, DataError, StageError
from tfdeploy.models import MODELS, ModelPlugin
from tfdeploy.models.keras_sources import open_source
from tfdeploy.recipe.fields import ModelConfig, field


@MODELS.register("keras")
class KerasModel(ModelPlugin):
    takes = frozenset({"arrays", "images"})

    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        path: str = field(doc="The trained model: a Keras 3 or tf-keras .keras or .h5 file, a "
                              "tf-keras SavedModel directory, or any SavedModel with a "
                              "serving signature (that one: export stages only).")
        custom_objects: List[str] = field(factory=list, doc="Custom layer classes as "
                                                            "module.Class; imported (their "
                                                            "code runs) because listed here.")
        unsafe: bool = field(False, doc="Allow Lambda layers and other code stored in the "
                                        "file. Only for files you trust.")
        signature: str = field("serving_default", doc="For a SavedModel that is not a "
                                                      "tf-keras model: the signature to run.")
        output: str = field("", doc="For such a SavedModel: the signature output holding "
                                    "one value per class, when it has several.")
        inputs: Dict[str, str] = field(factory=dict, doc="Model input name -> the data "
                                                         "column (.npz array) it reads; an "
                                                         "input not named here reads the "
                                                         "column of its own name.")

        def check(self):
            for i, spec in enumerate(self.custom_objects):
                if "." not in spec.strip("."):
                    yield (("custom_objects", i), f"{spec!r} is not module.Class")

    capabilities = frozenset({"keras3"})

    def __init__(self, config, num_labels):
        super().__init__(config, num_labels)
        self._where = f"model.path {config.path}"
        self.source = open_source(config, self._where, self.custom_objects(), num_labels)
        shapes = self.source.output_shapes()
        if len(shapes) != 1 or shapes[0][-1] != num_labels:
            raise CheckpointError(f"{self._where}: the model outputs "
                                  f"{' and '.join(str(s[-1]) for s in shapes)} values per "
                                  f"example but the data has {num_labels} classes")
        self.inputs = {name: (shape, tf.as_dtype(dtype))
                       for name, (shape, dtype) in self.source.inputs().items()}

    @property
    def trainable(self):
        return self.source.trainable

    def check_trainable(self, stage_names):
        if stage_names and self.source.refusal:
            raise StageError(f"stages {', '.join(stage_names)}: {self.source.refusal}")
        super().check_trainable(stage_names)

    def adapt(self, task):
        """Check, on real training rows, that the tf-keras model gives the user's outputs."""
        self.source.check(self.encode(task.train.take(BRIDGE_ROWS).examples))

    def build(self):
        return self.source.build()

    def describe(self):
        return self.source.describe()

    def keras3_model(self, model):
        return keras3.to_keras3(model, f"{self._where} (back to Keras 3)")

    def custom_objects(self):
        return import_classes(self.config.custom_objects, self._where)

    def files(self):
        path = self.config.path
        if os.path.isdir(path):
            return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
        return [path]

    def encode(self, examples, max_length=None):
        return {name: self._column(name, examples) for name in self.inputs}

    def _column(self, name, examples):
        """The array model input ``name`` reads: the one array, or its named column."""
        shape, dtype = self.inputs[name]
        if isinstance(examples, dict):
            column = self.config.inputs.get(name, name)
            if column not in examples:
                raise DataError(f"model input {name!r} reads data column {column!r}, which "
                                f"the data does not have (it has {', '.join(examples)}); "
                                f"map it in model.inputs")
            array, what = np.asarray(examples[column]), f"data column {column!r}"
        elif len(self.inputs) == 1:
            array, what = np.asarray(examples), "the data"
        else:
            raise DataError(f"{self._where}: the model has inputs {', '.join(self.inputs)} "
                            f"but the data gives one array; name one .npz array per input "
                            f"in data.columns")
        return fit_shape(array, shape, what, name).astype(dtype.as_numpy_dtype)

    def input_specs(self):
        return {name: tf.TensorSpec([None, *shape], dtype, name=name)
                for name, (shape, dtype) in self.inputs.items()}

    def synthetic_inputs(self, batch, seq_length=None, seed=0):
        rng = np.random.default_rng(seed)
        return {name: rng.random((batch, *[d or seq_length or 1 for d in shape]))
                .astype(dtype.as_numpy_dtype) for name, (shape, dtype) in self.inputs.items()}


BRIDGE_ROWS = 64  # training rows the rebuilt model's outputs are compared on


def fit_shape(array, shape, what, name):
    """``array`` rows as model input ``name`` takes them (a flat row reshaped when the
    sizes agree; a free dimension takes the array's)."""
    rows = array.shape[1:]
    if len(rows) == len(shape) and all(d is None or d == r for d, r in zip(shape, rows)):
        return array
    if None not in shape and int(np.prod(rows)) == int(np.prod(shape)):
        return array.reshape((-1, *shape))
    raise DataError(f"{what} has rows shaped {rows}, which model input {name!r} "
                    f"(shape {tuple(shape)}) cannot take")


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
