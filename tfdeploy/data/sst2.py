"""GLUE SST-2 (binary sentiment): train.tsv / dev.tsv with a ``sentence<TAB>label`` header.

Found at ``data.dir``, else ``$TFDEPLOY_DATA_DIR/sst2``. When neither holds the files, the
official GLUE archive is tried; offline, the error says where to put them.
"""
import dataclasses
import io
import os
import urllib.request
import zipfile
from typing import Optional

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task, TextDataConfig
from tfdeploy.data.tables import label_ids, read_labelled
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import field

GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
FILES = ("train.tsv", "dev.tsv")


def default_dir():
    root = os.environ.get("TFDEPLOY_DATA_DIR")
    return os.path.join(root, "sst2") if root else None


def download(dest):
    """Fetch SST-2 from GLUE into ``dest``; False when the network does not allow it."""
    try:
        with urllib.request.urlopen(GLUE_URL, timeout=15) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except OSError:
        return False
    os.makedirs(dest, exist_ok=True)
    for name in FILES:
        with archive.open(f"SST-2/{name}") as src:
            data = src.read()
        tmp = os.path.join(dest, name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, os.path.join(dest, name))
    return True


@DATA.register("sst2")
class SST2(DataPlugin):
    gives = "text"

    @dataclasses.dataclass(kw_only=True)
    class Config(TextDataConfig):
        dir: Optional[str] = field(None, doc="Folder with train.tsv and dev.tsv; default "
                                             "$TFDEPLOY_DATA_DIR/sst2.")
        download: bool = field(True, doc="Try the official GLUE archive when the files are "
                                         "missing.")

    def find(self):
        directory = self.config.dir or default_dir()
        if directory and all(os.path.exists(os.path.join(directory, f)) for f in FILES):
            return directory
        target = directory or os.path.join(os.path.expanduser("~"), ".cache", "tfdeploy",
                                           "data", "sst2")
        if all(os.path.exists(os.path.join(target, f)) for f in FILES):
            return target
        if self.config.download and download(target):
            return target
        raise DataError(
            f"SST-2 not found: expected {' and '.join(FILES)} in "
            f"{directory or '$TFDEPLOY_DATA_DIR/sst2 (TFDEPLOY_DATA_DIR is not set)'}"
            f"{' and the GLUE download failed (offline?)' if self.config.download else ''}. "
            f"Put the GLUE SST-2 files there, or set data.dir.")

    def files(self):
        return [os.path.join(self.find(), name) for name in FILES]

    def load(self):
        directory = self.find()
        splits = []
        for name in FILES:
            path = os.path.join(directory, name)
            texts, raw, lines = read_labelled(path, "tsv", "sentence", "label")
            splits.append(Split(texts, np.asarray(label_ids(path, raw, lines, ["0", "1"]),
                                                  np.int32)))
        return self.limit(Task(splits[0], splits[1], ["negative", "positive"]))
