"""Fashion-MNIST (10 classes of 28x28 grey images) from IDX files.

Debian's ``dataset-fashion-mnist`` package installs them in
``/usr/share/datasets/fashion-mnist/`` (the default ``dir``); ``.gz`` or plain files work.
"""
import dataclasses
import gzip
import os

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import DataConfig, field

LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
          "bag", "ankle-boot"]


def read_idx(path):
    """An IDX array (the MNIST file format): magic, dims, then big-endian data."""
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                data = f.read()
            break
    else:
        raise DataError(f"Fashion-MNIST file missing: {path}[.gz] (install Debian's "
                        f"dataset-fashion-mnist or set data.dir)")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: {body.size} values for shape {dims}")
    return body.reshape(dims)


@DATA.register("fashion_mnist")
class FashionMNIST(DataPlugin):
    @dataclasses.dataclass(kw_only=True)
    class Config(DataConfig):
        dir: str = field("/usr/share/datasets/fashion-mnist", doc="Folder with the IDX files.")
        max_train_examples: int = field(0, ge=0, doc="Use N training images (seeded "
                                                     "sample); 0 = all 60,000.")
        max_validation_examples: int = field(0, ge=0, doc="Use the first N test images; "
                                                          "0 = all 10,000.")

    def load(self):
        d = self.config.dir

        def split(prefix):
            images = read_idx(os.path.join(d, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(os.path.join(d, f"{prefix}-labels-idx1-ubyte"))
            if len(images) != len(labels):
                raise DataError(f"{d}: {len(images)} {prefix} images but {len(labels)} labels")
            return Split(images, labels.astype(np.int32))

        return self.limit(Task(split("train"), split("t10k"), list(LABELS)))
