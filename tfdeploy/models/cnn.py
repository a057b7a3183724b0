"""A small image classifier (Conv-Pool x N, Dense, Dropout, Dense) for Fashion-MNIST-like
data: the CNN path of the pruning (XNNPACK policy), clustering and QAT stages."""
import dataclasses
from typing import List

import numpy as np
import tf_keras as keras

from tfdeploy.models import MODELS, ImageInputs, ModelPlugin
from tfdeploy.recipe.fields import ModelConfig, field


@MODELS.register("cnn")
class CNN(ImageInputs, ModelPlugin):
    takes = frozenset({"images", "arrays"})

    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        input_shape: List[int] = field(factory=lambda: [28, 28, 1], doc="Image height, width, "
                                                                        "channels.")
        filters: List[int] = field(factory=lambda: [32, 64], doc="Conv2D filters per block "
                                                                 "(3x3, ReLU, 2x2 max-pool).")
        dense: int = field(128, ge=1, doc="Units of the hidden Dense layer.")
        dropout: float = field(0.25, ge=0, lt=1, doc="Dropout before the classifier.")

        def check(self):
            if len(self.input_shape) != 3 or min(self.input_shape) < 1:
                yield ("input_shape", f"{self.input_shape} is not [height, width, channels]")

    sequence_input = False

    def build(self):
        cfg = self.config
        inputs = keras.Input(shape=tuple(cfg.input_shape), name="image")
        x = inputs
        for i, filters in enumerate(cfg.filters):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                    name=f"conv_{i}")(x)
            x = keras.layers.MaxPooling2D(name=f"pool_{i}")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(cfg.dense, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
        logits = keras.layers.Dense(self.num_labels, name="classifier")(x)
        return keras.Model(inputs, logits, name="cnn")

    def encode(self, images, max_length=None):
        images = np.asarray(images, np.float32) / 255.0
        return {"image": images.reshape((-1, *self.config.input_shape))}
