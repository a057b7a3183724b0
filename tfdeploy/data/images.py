"""`type: images`: a folder of class subfolders of image files (as Keras'
``image_dataset_from_directory`` reads them), decoded and resized with TensorFlow."""
import dataclasses
import os
import re
from typing import List, Literal, Optional

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task
from tfdeploy.data.augment import ImageAugmentation
from tfdeploy import files
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import DataConfig, field

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_LIMIT = 256 << 20  # one image file


@DATA.register("images")
class ImageFolders(DataPlugin):
    gives = "images"

    @dataclasses.dataclass(kw_only=True)
    class Config(DataConfig, ImageAugmentation):
        train: str = field(doc="Folder with one subfolder of images per class.")
        validation: str = field(doc="Folder laid out the same way: reported on, never "
                                    "chooses.")
        image_size: List[int] = field(factory=lambda: [224, 224], doc="Resize to [height, "
                                                                      "width].")
        color_mode: Literal["rgb", "grayscale"] = field("rgb", doc="Channels: 3 or 1.")
        scale: float = field(1 / 255, gt=0, doc="Pixel values are multiplied by this.")
        offset: float = field(0.0, doc="... then this is added (e.g. -1 with scale 1/127.5).")
        class_names: Optional[List[str]] = field(None, doc="Subfolders in label-id order; "
                                                           "null = sorted folder names.")

        def check(self):
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                yield ("image_size", f"{self.image_size} is not [height, width]")

    def augmentation(self):
        return self.config.augmentation()

    def classes(self):
        cfg = self.config
        if not os.path.isdir(cfg.train):
            raise DataError(f"data.train {cfg.train}: not a folder")
        found = sorted(d for d in os.listdir(cfg.train)
                       if os.path.isdir(os.path.join(cfg.train, d)))
        names = list(cfg.class_names or found)
        if not names:
            raise DataError(f"data.train {cfg.train}: no class subfolders")
        return names

    def paths(self, root, names):
        out = []
        for label, name in enumerate(names):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise DataError(f"{root}: class folder {name!r} is missing")
            out.extend((os.path.join(folder, f), label) for f in sorted(os.listdir(folder))
                       if f.lower().endswith(EXTENSIONS))
        if not out:
            raise DataError(f"{root}: no images ({', '.join(EXTENSIONS)}) in the class "
                            f"folders")
        return out

    def files(self):
        names = self.classes()
        return [p for root in (self.config.train, self.config.validation)
                for p, _ in self.paths(root, names)]

    def read(self, root, names):
        import tensorflow as tf

        cfg = self.config
        channels = 3 if cfg.color_mode == "rgb" else 1
        images, labels = [], []
        for path, label in self.paths(root, names):
            data = files.read_bytes(path, "image", limit=IMAGE_LIMIT)
            try:
                image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            except tf.errors.OpError as e:
                # TF prefixes the op's graph node and appends the op name: not the cause
                cause = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", e.message)
                raise DataError(f"image {path}: not a readable image "
                                f"({cause.splitlines()[0][:200]})") from None
            image = tf.image.resize(image, cfg.image_size)
            images.append(image.numpy() * cfg.scale + cfg.offset)
            labels.append(label)
        return Split(np.stack(images).astype(np.float32), np.asarray(labels, np.int32))

    def load(self):
        names = self.classes()
        return self.limit(Task(self.read(self.config.train, names),
                               self.read(self.config.validation, names), names))
