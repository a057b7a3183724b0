"""Raw request features -> a model's inputs, in the server, for any runtime.

A model plugin that looks its features up inside the SavedModel (``serving_default`` takes
raw strings) also describes the lookups in the manifest (``features``), so the server can
do the same for TFLite and ONNX artifacts, whose inputs are the table rows:
``{"inputs": {name: {"kind": "token", "vocabulary": [...]}` (row = position + 1, row 0 for
anything unknown) or ``{"kind": "bag", "separator": "|", "vocabulary": [...]}`` (a
multi-hot row over the vocabulary)``}}``.
"""
import numpy as np


class FeatureEncoder:
    def __init__(self, spec):
        self.inputs = {}
        for name, feature in spec["inputs"].items():
            kind = feature.get("kind")
            if kind not in ("token", "bag"):
                raise ValueError(f"feature {name}: unknown kind {kind!r} in the manifest")
            index = {token: i for i, token in enumerate(feature["vocabulary"])}
            self.inputs[name] = (kind, index, feature.get("separator", "|"))

    def __call__(self, raw):
        """{name: [N] strings} -> {name: model input array}."""
        out = {}
        for name, (kind, index, separator) in self.inputs.items():
            values = [str(v) for v in raw[name]]
            if kind == "token":
                out[name] = np.asarray([index.get(v, -1) + 1 for v in values], np.int32)
                continue
            hot = np.zeros((len(values), len(index)), np.float32)
            for row, value in enumerate(values):
                for token in value.split(separator):
                    if token in index:
                        hot[row, index[token]] = 1.0
            out[name] = hot
        return out
