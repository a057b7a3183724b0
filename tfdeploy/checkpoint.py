"""Save and load a stage's model (Keras H5: it round-trips QAT and custom layers, unlike
``.keras`` for QAT models)."""
import contextlib
import os

import tf_keras as keras

from tfdeploy.rundir import atomic_write_text

MODEL_FILE = "model.h5"


def save(model, directory):
    path = os.path.join(directory, MODEL_FILE)
    tmp = os.path.join(directory, ".tmp-" + MODEL_FILE)
    model.save(tmp, save_format="h5", include_optimizer=False)
    os.replace(tmp, path)
    atomic_write_text(os.path.join(directory, "model.json"), model.to_json())
    return path


def load(directory, strategy, custom_objects=None, scopes=()):
    """The stage's model; ``custom_objects`` from the model plugin, ``scopes`` from the
    stages whose wrappers it may hold (QAT)."""
    with strategy.scope(), contextlib.ExitStack() as stack:
        # wrappers deserialize their inner layers by name, outside load_model's own scope
        stack.enter_context(keras.utils.custom_object_scope(custom_objects or {}))
        for scope in scopes:
            stack.enter_context(scope())
        return keras.models.load_model(os.path.join(directory, MODEL_FILE),
                                       custom_objects=custom_objects or {}, compile=False)
