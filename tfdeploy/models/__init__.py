"""Model plugins: each builds a tf_keras model and knows how to encode raw inputs for it.

To add a model type, add a module here with a class decorated ``@MODELS.register("name")``
that subclasses :class:`ModelPlugin` and has a ``Config`` dataclass.
"""
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import ModelConfig, Registry, import_submodules

MODELS = Registry("model")
ModelConfig.registry = MODELS


class ModelPlugin:
    """Contract between a model type and the pipeline; generic code (stages, export, bench)
    asks the plugin, never probes the model.

    Required: ``build()`` (called inside ``strategy.scope()``: a fresh tf_keras model with
    its starting weights), ``encode`` (raw examples -> model inputs, once per dataset; for a
    ``sequence_input`` model ragged ``{"input_ids": ...}``, so batches can be bucketed by
    length), ``features`` (a padded batch -> the model's named inputs, with TF ops: it runs
    inside tf.data and in the serving signature), ``input_specs()`` (the serving signature's
    inputs) and ``synthetic_inputs`` (inputs shaped like real ones for benchmarks).

    Optional, with defaults: ``custom_objects()`` (what loading a saved model of this type
    needs), ``current_graph`` (bring an older saved graph up to date), ``onnx_rewrite``
    (ONNX Runtime fusions). Capabilities some stages need are named in ``capabilities``;
    a plugin without one refuses it with a clear message: ``student_layers`` (a student
    from chosen teacher layers), ``hidden_states`` (for hidden-state distillation),
    ``augment`` (a perturbed copy of a batch), ``keras3`` (each stage's model also written
    as a Keras 3 file).
    """

    Config = ModelConfig
    takes = frozenset()          # data kinds it encodes (a DataPlugin's ``gives``); empty: any
    sequence_input = False       # batches bucketed by length (token ids)
    capabilities = frozenset()
    trainable = True             # False: a graph without layers, post-training path only

    def __init__(self, config, num_labels):
        self.config, self.num_labels = config, num_labels

    def adapt(self, task):
        """Learn what the model's shape depends on from the training split (vocabularies);
        called once, before ``build`` and ``encode``. Default: nothing to learn."""

    def variant(self, config):
        """A plugin for ``config`` (e.g. a distillation student) that shares what this one
        learned in ``adapt``."""
        return MODELS.get(config.type)(config, self.num_labels)

    def build(self):
        raise NotImplementedError

    def encode(self, examples, max_length):
        raise NotImplementedError

    def features(self, ids):
        raise NotImplementedError

    def input_specs(self):
        raise NotImplementedError

    def synthetic_inputs(self, batch, seq_length, seed=0):
        """Inputs shaped like real ones, for latency benchmarks."""
        raise NotImplementedError

    def files(self):
        """The files the model's starting weights come from (a checkpoint): their bytes
        are part of every stage's cache key."""
        return []

    def custom_objects(self):
        """Layer classes by name, for loading a saved model of this type."""
        return {}

    def current_graph(self, model):
        """``model`` in today's graph (a plugin whose graph changed rebuilds old saves)."""
        return model

    def onnx_rewrite(self, proto):
        """The converted ONNX graph, rewritten for ONNX Runtime (fusions); default as is."""
        return proto

    def check_trainable(self, stage_names):
        """Refuse, before any work, stages for a model nothing can train or wrap."""
        if stage_names and not self.trainable:
            raise StageError(f"stages {', '.join(stage_names)}: the model is a graph "
                             f"without Keras layers, which no stage can train or "
                             f"wrap; it takes the post-training path only (stages: [] with "
                             f"export formats)")

    def raw_features(self):
        """A tf.Module turning raw request features into the model's inputs inside the
        SavedModel (``serving_default`` then takes raw features, ``serving_ids`` the
        model's inputs), with ``specs`` (its inputs); None when the model's inputs are what
        clients send."""
        return None

    def serving_features(self):
        """The same lookups for the server (TFLite and ONNX artifacts take table rows), as
        :mod:`tfdeploy.serve.features` reads them; None without ``raw_features``."""
        return None

    def serving_text(self):
        """How a server turns raw text into this model's inputs, or None (not a text model):
        ``{"tokenizer": "wordpiece", "lowercase": bool, "pad_id": int, "inputs": {input
        name: "ids" | "mask" | "zeros"}, "files": {bundle file name: path}}``."""
        return None

    def describe(self):
        """What the report says of where the model came from (a dict; default empty)."""
        return {}

    def keras3_model(self, model):
        """A stage's tf-keras ``model`` as a Keras 3 model, for a user who continues in
        Keras 3 (capability ``keras3``)."""
        self.require("keras3", "a Keras 3 copy of the model")

    def require(self, capability, what):
        """Refuse ``what`` clearly when this model type lacks ``capability``."""
        if capability not in self.capabilities:
            raise StageError(f"{what} needs a model with {capability.replace('_', ' ')}; "
                             f"model type {self.config.type} has none")

    def check_student_layers(self, layers):
        """Refuse, before any work, teacher layers a student cannot be built from."""
        self.require("student_layers", "distill: student_layers (or use student:)")

    def student_from(self, teacher, layers):
        self.require("student_layers", "student_layers")

    def hidden_states(self, model):
        self.require("hidden_states", "hidden_weight")

    def augment(self, inputs, rate):
        self.require("augment", "augment")


class ImageInputs:
    """Mixin for image models: one float input ``image`` shaped ``config.input_shape``."""

    def input_specs(self):
        import tensorflow as tf

        return {"image": tf.TensorSpec([None, *self.config.input_shape], tf.float32,
                                       name="image")}

    def synthetic_inputs(self, batch, seq_length=None, seed=0):
        import numpy as np

        rng = np.random.default_rng(seed)
        return {"image": rng.random((batch, *self.config.input_shape), np.float32)}


def check_data(config, data_type, gives):
    """Refuse, before any file is read, a data source whose examples the model cannot
    encode (an image model fed text)."""
    takes = MODELS.get(config.type).takes
    if takes and gives not in takes:
        raise StageError(f"model type {config.type} takes {' or '.join(sorted(takes))}, "
                         f"but data type {data_type} gives {gives}")


def create(config, num_labels):
    return MODELS.get(config.type)(config, num_labels)


import_submodules(__name__, __path__)
