"""`type: mobilenet`: a MobileNet-v1-style image classifier built for XNNPACK's sparse
inference.

Stem: ZeroPadding2D(1) then a 3x3 stride-2 valid Conv2D on 3 input channels (grey images
are repeated to 3 channels by the data source: ``data.channels: 3``), then depthwise-
separable blocks (depthwise 3x3 -> BN -> ReLU6 -> 1x1 Conv2D -> BN -> ReLU6), global
average pooling (keepdims, so XNNPACK's sparse subgraph ends on a MEAN), dropout and a
Dense classifier. That is the structure TFMOT's ``PruneForLatencyOnXNNPack`` and XNNPACK's
NCHW rewrite accept: the 1x1 convs are what pruning makes sparse, the depthwise convs and
the stem stay dense inside the sparse subgraph, the classifier runs after it.
"""
import dataclasses
from typing import List

import numpy as np
import tf_keras as keras

from tfdeploy.errors import DataError
from tfdeploy.models import MODELS, ImageInputs, ModelPlugin
from tfdeploy.recipe.fields import ModelConfig, field

# [filters, stride] per depthwise-separable block at width 1.0 (28x28 input: 14x14 after
# the stem, 7x7 after the stride-2 block).
DEFAULT_BLOCKS = [[64, 1], [128, 1], [128, 1], [256, 2], [256, 1], [512, 1]]


@MODELS.register("mobilenet")
class MobileNet(ImageInputs, ModelPlugin):
    takes = frozenset({"images", "arrays"})

    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        input_shape: List[int] = field(factory=lambda: [28, 28, 3], doc="Image height, "
                                       "width, channels (3: the stem XNNPACK sparsifies "
                                       "after needs 3 input channels).")
        width: float = field(1.0, gt=0, le=4, doc="Width multiplier: every layer's filters "
                                                  "times this (rounded to a multiple of 8).")
        depth: int = field(6, ge=1, le=32, doc="Depthwise-separable blocks: the first N of "
                                               "blocks.")
        stem_filters: int = field(32, ge=1, doc="Filters of the stem conv (at width 1).")
        blocks: List[List[int]] = field(factory=lambda: [list(b) for b in DEFAULT_BLOCKS],
                                        doc="[filters, stride] per block at width 1; stride "
                                            "1 or 2.")
        dropout: float = field(0.2, ge=0, lt=1, doc="Dropout before the classifier.")
        bn_momentum: float = field(0.9, gt=0, lt=1, doc="Batch norm moving-average momentum "
                                                        "(0.9: the statistics settle within "
                                                        "a few hundred steps, so short runs "
                                                        "evaluate right).")

        def check(self):
            if len(self.input_shape) != 3 or min(self.input_shape) < 1:
                yield ("input_shape", f"{self.input_shape} is not [height, width, channels]")
            for i, block in enumerate(self.blocks):
                if len(block) != 2 or block[0] < 1 or block[1] not in (1, 2):
                    yield (("blocks", i), f"{block} is not [filters >= 1, stride 1 or 2]")
            if self.depth > len(self.blocks):
                yield ("depth", f"{self.depth} is more than the {len(self.blocks)} blocks")

    sequence_input = False

    def filters(self, base):
        return max(8, int(round(base * self.config.width / 8)) * 8)

    def build(self):
        cfg = self.config
        inputs = keras.Input(shape=tuple(cfg.input_shape), name="image")
        x = keras.layers.ZeroPadding2D(1, name="stem_pad")(inputs)
        x = keras.layers.Conv2D(self.filters(cfg.stem_filters), 3, strides=2, padding="valid",
                                use_bias=False, name="stem_conv")(x)
        x = self.bn_relu(x, "stem")
        for i, (base, stride) in enumerate(cfg.blocks[:cfg.depth]):
            x = self.separable_block(x, self.filters(base), stride, f"block{i}")
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
        logits = keras.layers.Dense(self.num_labels, name="classifier")(x)
        return keras.Model(inputs, logits, name="mobilenet")

    def bn_relu(self, x, prefix):
        x = keras.layers.BatchNormalization(momentum=self.config.bn_momentum,
                                            name=f"{prefix}_bn")(x)
        return keras.layers.ReLU(6.0, name=f"{prefix}_relu")(x)

    def separable_block(self, x, filters, stride, prefix):
        # Explicit padding: XNNPACK's sparse (NCHW) subgraph takes depthwise convs with
        # padding 1 on each side, not TF's SAME padding (lopsided at stride 2).
        x = keras.layers.ZeroPadding2D(1, name=f"{prefix}_pad")(x)
        x = keras.layers.DepthwiseConv2D(3, strides=stride, use_bias=False, padding="valid",
                                         name=f"{prefix}_dw")(x)
        x = self.bn_relu(x, f"{prefix}_dw")
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_pw")(x)
        return self.bn_relu(x, f"{prefix}_pw")

    def encode(self, images, max_length=None):
        images = np.asarray(images)
        want = tuple(self.config.input_shape)
        if images.ndim == 3 and want[-1] == 1:
            images = images[..., None]
        if images.shape[1:] != want:
            raise DataError(f"the data gives images of shape {list(images.shape[1:])}, "
                            f"model.input_shape is {list(want)} (grey images: set "
                            f"data.channels to {want[-1]})")
        return {"image": images.astype(np.float32) / 255.0}
