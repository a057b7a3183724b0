"""Users' own labelled text: CSV, TSV or JSONL with configurable columns and label map."""
import dataclasses
from typing import List, Literal, Optional

import numpy as np

from tfdeploy.data import DATA, DataPlugin, Split, Task, TextDataConfig
from tfdeploy.data.tables import label_ids, read_labelled
from tfdeploy.recipe.fields import field


@DATA.register("text")
class TextClassification(DataPlugin):
    gives = "text"

    @dataclasses.dataclass(kw_only=True)
    class Config(TextDataConfig):
        train: str = field(doc="Training file (.csv, .tsv, .jsonl).")
        validation: Optional[str] = field(None, doc="Validation file; if absent, "
                                                    "validation_split of train is held out.")
        validation_split: float = field(0.1, gt=0, lt=1, doc="Held-out fraction of train "
                                                             "when there is no validation file.")
        format: Literal["auto", "csv", "tsv", "jsonl"] = field("auto", doc="File format; auto "
                                                                          "= by extension.")
        text_column: str = field("text", doc="Column (or JSON key) holding the text.")
        label_column: str = field("label", doc="Column (or JSON key) holding the label.")
        labels: List[str] = field(factory=list, doc="Label values in id order (the label "
                                                    "map); empty = sorted values in train.")
        label_names: List[str] = field(factory=list, doc="Display names per label id; "
                                                         "empty = the label values.")

        def check(self):
            if self.label_names and self.labels and len(self.label_names) != len(self.labels):
                yield ("label_names", f"has {len(self.label_names)} names for "
                                      f"{len(self.labels)} labels")

    def read(self, path, label_map=None):
        cfg = self.config
        texts, raw, lines = read_labelled(path, cfg.format, cfg.text_column, cfg.label_column)
        label_map = label_map or list(cfg.labels) or sorted(set(raw))
        return texts, np.asarray(label_ids(path, raw, lines, label_map), np.int32), label_map

    def files(self):
        return [self.config.train] + ([self.config.validation] if self.config.validation
                                      else [])

    def load(self):
        cfg = self.config
        texts, labels, label_map = self.read(cfg.train)
        if cfg.validation:
            vtexts, vlabels, _ = self.read(cfg.validation, label_map)
            train, validation = Split(texts, labels), Split(vtexts, vlabels)
        else:
            order = np.random.default_rng(self.seed).permutation(len(texts))
            cut = max(1, int(round(len(texts) * cfg.validation_split)))
            held, kept = order[:cut], order[cut:]
            train = Split([texts[i] for i in kept], labels[kept])
            validation = Split([texts[i] for i in held], labels[held])
        names = list(cfg.label_names) or label_map
        return self.limit(Task(train, validation, names))
