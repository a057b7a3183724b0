"""Data plugins: each loads raw train/validation examples and their labels.

To add a data source, add a module here with a class decorated ``@DATA.register("name")``
that subclasses :class:`DataPlugin` and has a ``Config`` dataclass. Encoding for the model
and batching live in :mod:`tfdeploy.data.pipeline`, shared by all sources.
"""
import dataclasses
from typing import List, Optional

import numpy as np

from tfdeploy.errors import DataError
from tfdeploy.objectives import CLASSIFICATION, Objective
from tfdeploy.recipe.fields import DataConfig, Registry, field, import_submodules

DATA = Registry("data")
DataConfig.registry = DATA


@dataclasses.dataclass
class Split:
    """Raw examples (texts, an array, or named columns of arrays) and integer labels of
    one split."""

    examples: list
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        return Split(_rows(self.examples, indices), self.labels[indices])

    def take(self, n):
        return self.subset(np.arange(n)) if n and n < len(self) else self


def _rows(examples, indices):
    """The chosen rows of a list, an array, or named columns of arrays."""
    if isinstance(examples, dict):
        return {name: column[indices] for name, column in examples.items()}
    if isinstance(examples, np.ndarray):
        return examples[indices]
    return [examples[i] for i in indices]


@dataclasses.dataclass
class Task:
    train: Split
    validation: Split             # reported on; never chooses anything
    label_names: List[str]
    selection: Optional[Split] = None  # carved from train; checkpoints are chosen on it
    objective: Objective = CLASSIFICATION  # loss, metric and which way is better
    train_all: Optional[Split] = None  # train and selection together (a refit trains on it)

    @property
    def num_labels(self):
        """The model's output width (1 for a rating or a click)."""
        return self.objective.output_width(len(self.label_names))


@dataclasses.dataclass(kw_only=True)
class TextDataConfig(DataConfig):
    """Fields shared by text sources."""

    max_length: int = field(128, ge=3, le=512, doc="Tokens per example, [CLS]/[SEP] "
                                                   "included; longer texts are truncated.",
                            unit="tokens")
    buckets: List[int] = field(factory=lambda: [16, 32, 64, 128], ge=1, le=512, max_items=64,
                               doc="Padded lengths to bucket batches by (values above "
                                   "max_length are dropped, max_length is added).",
                               unit="tokens")


class DataPlugin:
    Config = DataConfig
    gives = "arrays"  # what the examples are: text, images, arrays or tables (see models)

    def __init__(self, config, seed=0):
        self.config, self.seed = config, seed

    def load(self) -> Task:
        raise NotImplementedError

    def augmentation(self):
        """fn(example tensor, stateless seed) -> augmented example for the training stream,
        or None (the default: no augmentation)."""
        return None

    def files(self):
        """The files ``load`` reads: their bytes are part of every stage's cache key."""
        return []

    def limit(self, task):
        """Apply max_*_examples (the training subset is a seeded random sample), then hold
        ``selection_split`` of the training rows out as the selection split."""
        cfg = self.config
        train = task.train
        if len(train) < 2 or not len(task.validation):
            raise DataError(f"data ({cfg.type}): {len(train)} training and "
                            f"{len(task.validation)} validation rows; training needs at least "
                            f"2 and evaluation at least 1")
        if cfg.max_train_examples and cfg.max_train_examples < len(train):
            order = np.random.default_rng(self.seed).permutation(len(train))
            train = train.subset(order[:cfg.max_train_examples])
        selection, train_all = None, train
        if cfg.selection_split:
            # a seed stream apart from max_train_examples' sample
            order = np.random.default_rng([self.seed, 1]).permutation(len(train))
            cut = max(1, int(round(len(train) * cfg.selection_split)))
            train, selection = train.subset(np.sort(order[cut:])), \
                train.subset(np.sort(order[:cut]))
        return Task(train, task.validation.take(cfg.max_validation_examples), task.label_names,
                    selection, task.objective, train_all)


def create(config, seed=0):
    return DATA.get(config.type)(config, seed)


import_submodules(__name__, __path__)
