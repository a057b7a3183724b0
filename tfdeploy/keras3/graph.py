"""A functional model's graph read from either Keras config format, and rebuilt in a
framework layer by layer.

Keras 3 writes a call's inputs as ``__keras_tensor__`` dicts holding ``keras_history``;
tf-keras writes each call as ``[[layer, node, tensor, kwargs], ...]``. Both become
:class:`Ref` here, so one rebuild serves both directions.
"""
import dataclasses
from typing import Any, List

from tfdeploy.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Ref:
    """Output ``tensor`` of call ``node`` of layer ``layer``."""

    layer: str
    node: int
    tensor: int


@dataclasses.dataclass
class Call:
    args: list
    kwargs: dict


@dataclasses.dataclass
class LayerEntry:
    name: str
    class_name: str
    module: str
    registered_name: Any
    config: dict
    calls: List[Call]


@dataclasses.dataclass
class Graph:
    name: str
    layers: List[LayerEntry]
    inputs: Any    # a Ref, or a list / dict of them
    outputs: Any


def _entry(layer, calls):
    return LayerEntry(layer.get("name") or layer["config"].get("name"), layer["class_name"],
                      layer.get("module") or "", layer.get("registered_name"),
                      layer.get("config") or {}, calls)


def _refs(structure, as_ref):
    """``structure`` with every tensor reference replaced by a Ref (``as_ref`` spots one)."""
    ref = as_ref(structure)
    if ref is not None:
        return ref
    if isinstance(structure, (list, tuple)):
        return [_refs(v, as_ref) for v in structure]
    if isinstance(structure, dict):
        return {k: _refs(v, as_ref) for k, v in structure.items()}
    return structure


def _history_ref(value):
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return Ref(*value["config"]["keras_history"])
    return None


def _triple_ref(value):
    if (isinstance(value, (list, tuple)) and len(value) in (3, 4) and isinstance(value[0], str)
            and all(isinstance(v, int) for v in value[1:3])):
        return Ref(*value[:3])
    return None


def _endpoints(value):
    """Keras writes one endpoint as a bare triple and several as a list (or dict) of them."""
    ref = _triple_ref(value)
    if ref is not None:
        return ref
    return _refs(value, _triple_ref)


def from_keras3(config):
    layers = [_entry(layer, [Call(_refs(n.get("args", []), _history_ref),
                                  _refs(n.get("kwargs", {}), _history_ref))
                             for n in layer.get("inbound_nodes", [])])
              for layer in config["layers"]]
    return Graph(config.get("name", "model"), layers, _endpoints(config["input_layers"]),
                 _endpoints(config["output_layers"]))


def from_tf_keras(config):
    layers = []
    for layer in config["layers"]:
        calls = []
        for node in layer.get("inbound_nodes", []):
            inputs = [Ref(*entry[:3]) for entry in node]
            kwargs = _refs(node[0][3] if len(node[0]) > 3 else {}, _triple_ref)
            calls.append(Call([inputs[0] if len(inputs) == 1 else inputs], kwargs))
        layers.append(_entry(layer, calls))
    return Graph(config.get("name", "model"), layers, _endpoints(config["input_layers"]),
                 _endpoints(config["output_layers"]))


def _resolve(structure, tensors):
    if isinstance(structure, Ref):
        return tensors[(structure.layer, structure.node)][structure.tensor]
    if isinstance(structure, list):
        return [_resolve(v, tensors) for v in structure]
    if isinstance(structure, dict):
        return {k: _resolve(v, tensors) for k, v in structure.items()}
    return structure


def _ready(structure, tensors):
    if isinstance(structure, Ref):
        return (structure.layer, structure.node) in tensors
    if isinstance(structure, (list, dict)):
        values = structure.values() if isinstance(structure, dict) else structure
        return all(_ready(v, tensors) for v in values)
    return True


def _flat(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def rebuild(graph, make_input, make_layer, where):
    """Call the layers ``make_layer(entry)`` makes (one per entry, shared across its calls)
    in an order where every input exists; ``make_input(entry)`` makes each input tensor.
    Returns ``(inputs, outputs, {name: layer})`` in the graph's structure."""
    tensors, made = {}, {}
    pending = []
    for entry in graph.layers:
        if entry.class_name == "InputLayer":
            tensors[(entry.name, 0)] = [make_input(entry)]
        else:
            pending.extend((entry, i) for i in range(len(entry.calls)))
    done = set()
    while pending:
        waiting = []
        for entry, i in pending:
            call = entry.calls[i]
            if (i and (entry.name, i - 1) not in done) or not _ready([call.args, call.kwargs],
                                                                     tensors):
                waiting.append((entry, i))
                continue
            layer = made.get(entry.name) or made.setdefault(entry.name, make_layer(entry))
            outputs = layer(*_resolve(call.args, tensors), **_resolve(call.kwargs, tensors))
            tensors[(entry.name, i)] = _flat(outputs)
            done.add((entry.name, i))
        if len(waiting) == len(pending):
            names = sorted({entry.name for entry, _ in waiting})
            raise CheckpointError(f"{where}: the layer graph cannot be ordered (layers "
                                  f"{', '.join(names[:5])} wait on inputs never made)")
        pending = waiting
    return _resolve(graph.inputs, tensors), _resolve(graph.outputs, tensors), made
