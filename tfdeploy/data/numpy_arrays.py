"""`type: numpy`: arrays the user saved with ``np.savez``: inputs and integer labels by
name, for their own Keras model (``model: {type: keras}``). One input array (``x``), or
several named columns (``columns``) for a model with several inputs."""
import dataclasses
import zipfile
from typing import List

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task
from tfdeploy import files
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import DataConfig, field


@DATA.register("numpy")
class NumpyArrays(DataPlugin):
    gives = "arrays"

    @dataclasses.dataclass(kw_only=True)
    class Config(DataConfig):
        train: str = field(doc="Training .npz file.")
        validation: str = field(doc="Validation .npz file: reported on, never chooses.")
        x: str = field("x", doc="Name of the input array in each .npz.")
        y: str = field("y", doc="Name of the integer label array in each .npz.")
        columns: List[str] = field(factory=list, doc="For a model with several inputs: the "
                                                     "input arrays in each .npz, each a "
                                                     "column by its name (replaces x).")
        label_names: List[str] = field(factory=list, doc="Class names in label-id order; "
                                                         "empty = 0 .. max label.")

    def files(self):
        return [self.config.train, self.config.validation]

    def read(self, path):
        cfg = self.config
        where = f"data file {path}"
        files.checked(path, "data file")
        if not zipfile.is_zipfile(path):
            raise DataError(f"{where}: not an .npz archive (np.savez writes one)")
        try:  # allow_pickle=False: an object array would run code on loading
            with np.load(path, allow_pickle=False) as npz:
                names = list(cfg.columns) or [cfg.x]
                missing = [k for k in names + [cfg.y] if k not in npz.files]
                if missing:
                    raise DataError(f"{where}: no array named {', '.join(missing)} (it has "
                                    f"{', '.join(npz.files) or 'none'}); set data.x "
                                    f"(or data.columns) / data.y")
                columns, y = {k: npz[k] for k in names}, npz[cfg.y]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{where}: not a readable .npz of plain arrays ({e})") from None
        for name, x in columns.items():
            if len(x) != len(y) or y.ndim != 1:
                raise DataError(f"{where}: {len(x)} rows in {name} but labels of shape "
                                f"{y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(f"{where}: labels must be integer class ids >= 0 (got {y.dtype})")
        return Split(columns if cfg.columns else columns[cfg.x], y.astype(np.int32))

    def load(self):
        cfg = self.config
        train, validation = self.read(cfg.train), self.read(cfg.validation)
        count = int(max(train.labels.max(initial=0), validation.labels.max(initial=0))) + 1
        names = list(cfg.label_names) or [str(i) for i in range(count)]
        if len(names) < count:
            raise DataError(f"data.label_names: {len(names)} names for labels up to "
                            f"{count - 1}")
        return self.limit(Task(train, validation, names))
