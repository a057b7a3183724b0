"""Model plugins: each builds a tf_keras model and knows how to encode raw inputs for it.

To add a model type, add a module here with a class decorated ``@MODELS.register("name")``
that subclasses :class:`ModelPlugin` and has a ``Config`` dataclass.
"""
from tfdeploy.recipe.fields import ModelConfig, Registry, import_submodules

MODELS = Registry("model")
ModelConfig.registry = MODELS


class ModelPlugin:
    """Contract between a model type and the pipeline.

    ``build()`` is called inside ``strategy.scope()`` and returns a fresh tf_keras model with
    its starting weights. ``encode`` turns raw examples into ``{"input_ids": [ragged ids]}``
    once per dataset (unpadded, so batches can be bucketed by length); ``features`` maps a
    padded id batch to the model's named inputs with TF ops (it runs inside tf.data and in
    the serving signature). ``input_specs()`` names the serving signature's inputs.
    """

    Config = ModelConfig

    def __init__(self, config, num_labels):
        self.config, self.num_labels = config, num_labels

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

    def onnx_rewrite(self, proto):
        """The converted ONNX graph, rewritten for ONNX Runtime (fusions); default as is."""
        return proto


def create(config, num_labels):
    return MODELS.get(config.type)(config, num_labels)


import_submodules(__name__, __path__)
