"""Which layers an optimization stage touches, and why it skips the others.

Used by prune, cluster and qat alike, and by ``--dry_run`` to print the plan per layer.
"""
import dataclasses
import re
from typing import List, Literal

import numpy as np
import tf_keras as keras

from tfdeploy.recipe.fields import field

TYPES = {"dense": (keras.layers.Dense,),
         "conv": (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D),
         "embedding": (keras.layers.Embedding,)}


@dataclasses.dataclass(kw_only=True)
class LayerSelection:
    include: List[str] = field(factory=lambda: [".*"], doc="Layer-name regexes (full match) "
                                                          "the stage may touch.")
    exclude: List[str] = field(factory=list, doc="Layer-name regexes to leave alone.")
    layer_types: List[Literal["dense", "conv", "embedding"]] = field(
        factory=lambda: ["dense", "conv"], doc="Kinds of layers the stage applies to.")
    min_weights: int = field(1024, ge=0, doc="Skip layers whose main weight has fewer "
                                             "elements (tiny layers save nothing).")

    def check(self):
        for key in ("include", "exclude"):
            for i, pattern in enumerate(getattr(self, key)):
                try:
                    re.compile(pattern)
                except re.error as e:
                    yield ((key, i), f"invalid regex {pattern!r}: {e}")


def main_weight(layer):
    """The weight matrix a stage acts on (kernel, depthwise kernel or embedding table)."""
    for name in ("kernel", "depthwise_kernel", "embeddings"):
        if hasattr(layer, name):
            return getattr(layer, name)
    return None


def plan(model, cfg: LayerSelection, extra_check=None):
    """[(layer, chosen: bool, reason)] for every layer with weights."""
    types = tuple(t for kind in cfg.layer_types for t in TYPES[kind])
    out = []
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        weight = main_weight(layer)
        if not isinstance(layer, types):
            out.append((layer, False, f"skipped: {type(layer).__name__} is not one of "
                                      f"{', '.join(cfg.layer_types)}"))
        elif not any(re.fullmatch(p, name) for p in cfg.include):
            out.append((layer, False, "skipped: not matched by include"))
        elif any(re.fullmatch(p, name) for p in cfg.exclude):
            out.append((layer, False, "skipped: excluded by pattern"))
        elif weight is None or int(np.prod(weight.shape)) < cfg.min_weights:
            out.append((layer, False, f"skipped: too small (< {cfg.min_weights} weights)"))
        else:
            reason = extra_check(layer) if extra_check else None
            out.append((layer, reason is None, reason or ""))
    return out


def chosen(model, cfg: LayerSelection, stage, extra_check=None):
    """Names of the layers ``stage`` will touch; a clear error when there are none."""
    from tfdeploy.errors import StageError

    names = [layer.name for layer, ok, _ in plan(model, cfg, extra_check) if ok]
    if not names:
        raise StageError(f"{stage}: no layer selected (check include/exclude/layer_types/"
                         f"min_weights with --dry_run)")
    return names


def wrap_problems(model, names):
    """[(layer, why TFMOT cannot wrap it)] for the layers ``names`` a stage wraps. TFMOT
    clones the model layer by layer and builds each wrapper from its layer's output shape."""
    from tf_keras.src.engine.functional import Functional  # Sequential is one too

    if not isinstance(model, Functional):
        return [(model.name, f"a subclassed model ({type(model).__name__}): TFMOT rebuilds "
                             f"models layer by layer, which needs a functional or "
                             f"Sequential model")]
    out = []
    for name in names:
        layer = model.get_layer(name)
        try:  # on a fresh copy: inferring a shape traces the layer, which adds graph nodes
            copy = type(layer).from_config(layer.get_config())
        except Exception:  # noqa: BLE001 — cannot copy it: let TFMOT say what it says
            continue
        try:
            copy.compute_output_shape(layer.input_shape)
        except NotImplementedError:
            out.append((name, f"a {type(layer).__name__} (a TF op or function called on Keras "
                              f"tensors) has no static output shape for TFMOT's wrapper; "
                              f"write it as a Keras layer (e.g. keras.layers.ReLU)"))
        except (TypeError, ValueError):  # e.g. an Embedding on [batch] ids: shape unknown
            continue  # here; TFMOT builds its wrapper from the live layer instead
    return out


def sparsity_report(model, names):
    """Measured zeros per layer (main weight) and overall, from the actual weights."""
    layers, zeros, total = {}, 0, 0
    for name in names:
        w = main_weight(model.get_layer(name)).numpy()
        z = int(np.count_nonzero(w == 0))
        layers[name] = round(z / w.size, 6)
        zeros, total = zeros + z, total + w.size
    return {"sparsity": round(zeros / total, 6) if total else 0.0, "layers": layers}
