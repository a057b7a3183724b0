"""Fashion-MNIST (10 classes of 28x28 grey images) from IDX files.

Debian's ``dataset-fashion-mnist`` package installs them in
``/usr/share/datasets/fashion-mnist/`` (the default ``dir``); ``.gz`` or plain files work.
When they are not there, the package is fetched without installing it (``apt-get
download`` + ``dpkg-deb -x``, no root needed) into the tfdeploy cache.

``channels: 3`` repeats each grey image into 3 identical channels, for models whose stem
expects RGB (the XNNPACK sparse-inference stem is a 3x3 stride-2 conv on 3 channels).
"""
import dataclasses
import glob
import gzip
import os
import subprocess
import tempfile
import zlib

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task
from tfdeploy.data.augment import ImageAugmentation
from tfdeploy import files
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import DataConfig, field

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")
LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
          "bag", "ankle-boot"]


def read_idx(path):
    """An IDX array (the MNIST file format): magic, dims, then big-endian data."""
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            data = files.read_bytes(candidate, "Fashion-MNIST file")
            if candidate.endswith(".gz"):
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError, zlib.error) as e:
                    raise DataError(f"Fashion-MNIST file {candidate}: not a complete gzip "
                                    f"file ({e})") from None
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


def fetch_debian_package(dest):
    """Unpack Debian's dataset-fashion-mnist into ``dest`` (atomically)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp,
                                  capture_output=True, text=True, timeout=300)
            debs = glob.glob(os.path.join(tmp, "*.deb"))
            if proc.returncode or not debs:
                raise OSError(proc.stderr.strip().splitlines()[-1:] or "no package")
            subprocess.run(["dpkg-deb", "-x", debs[0], os.path.join(tmp, "root")], check=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise DataError(f"Fashion-MNIST not found and Debian's dataset-fashion-mnist "
                            f"could not be fetched ({e}); install it or set data.dir") from None
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(os.path.join(tmp, "root", "usr", "share", "datasets", "fashion-mnist"),
                   dest)


@DATA.register("fashion_mnist")
class FashionMNIST(DataPlugin):
    gives = "images"

    @dataclasses.dataclass(kw_only=True)
    class Config(DataConfig, ImageAugmentation):
        dir: str = field("/usr/share/datasets/fashion-mnist", doc="Folder with the IDX files.")
        channels: int = field(1, ge=1, le=3, doc="1: grey images as stored; 3: each grey "
                                                 "image repeated into 3 channels.")

        def check(self):
            if self.channels not in (1, 3):
                yield ("channels", f"{self.channels} is not 1 or 3")

    def augmentation(self):
        return self.config.augmentation()

    def find(self):
        d = self.config.dir
        if os.path.isdir(d):  # a folder that is there is the one to read: never another
            missing = [n for n in NAMES if not any(os.path.exists(os.path.join(d, n + gz))
                                                   for gz in ("", ".gz"))]
            if missing:
                raise DataError(f"Fashion-MNIST folder {d}: no {', '.join(missing)}[.gz]")
            return d
        from tfdeploy.wheels import cache_dir

        cached = os.path.join(cache_dir(), "data", "fashion-mnist")
        if not os.path.exists(os.path.join(cached, "train-labels-idx1-ubyte.gz")):
            fetch_debian_package(cached)
        return cached

    def files(self):
        d, found = self.find(), []
        for name in NAMES:
            path = os.path.join(d, name)
            found.append(path if os.path.exists(path) else path + ".gz")
        return found

    def load(self):
        d = self.find()

        def split(prefix):
            images = read_idx(os.path.join(d, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(os.path.join(d, f"{prefix}-labels-idx1-ubyte"))
            if len(images) != len(labels):
                raise DataError(f"{d}: {len(images)} {prefix} images but {len(labels)} labels")
            if self.config.channels == 3:  # 1: [N, 28, 28] as stored
                images = np.repeat(images[..., None], 3, axis=-1)
            return Split(images, labels.astype(np.int32))

        return self.limit(Task(split("train"), split("t10k"), list(LABELS)))
