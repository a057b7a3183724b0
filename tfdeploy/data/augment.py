"""Training-time image augmentation, as fields an image data source mixes into its Config.

Applied to the training stream only (never to selection, validation or calibration rows),
per example, with stateless random ops seeded from the recipe's seed: a rerun sees the same
augmented images in the same order.
"""
import dataclasses

from tfdeploy.recipe.fields import field


@dataclasses.dataclass(kw_only=True)
class ImageAugmentation:
    random_flip: bool = field(False, doc="Mirror each training image left-right with "
                                         "probability 0.5.")
    random_crop: int = field(0, ge=0, le=64, doc="Pad each training image by N pixels of "
                                                 "zeros on every side, then crop back to "
                                                 "its size at a random offset (N-pixel "
                                                 "shifts); 0 = off.", unit="pixels")

    def augmentation(self):
        """fn(image [H, W, C], seed [2]) -> image, or None when nothing is on."""
        if not self.random_flip and not self.random_crop:
            return None
        import tensorflow as tf

        flip, pad = self.random_flip, self.random_crop

        def augment(image, seed):
            if pad:
                size = tf.shape(image)
                padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
                image = tf.image.stateless_random_crop(padded, size, seed)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed[::-1])
            return image

        return augment
