"""A functional or Sequential model rebuilt in the other Keras, with every weight copied by
its path, and the largest difference between the two models' outputs."""
import numpy as np

from tfdeploy.errors import CheckpointError
from tfdeploy.keras3 import graph as graphs
from tfdeploy.keras3 import layers


def to_tf_keras(model, where):
    """The Keras 3 ``model`` as a tf-keras model (raises CheckpointError naming the first
    layer that cannot cross, and why)."""
    return _convert(model, layers.keras3(), layers.tf_keras(), graphs.from_keras3, where)


def to_keras3(model, where):
    """The tf-keras ``model`` as a Keras 3 model (same refusals)."""
    return _convert(model, layers.tf_keras(), layers.keras3(), graphs.from_tf_keras, where)


def _functional_config(model, source, where):
    """The model's functional config; a Sequential model is read as the functional model of
    its own layers and tensors."""
    if isinstance(model, source.module.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise CheckpointError(f"{where}: the Sequential model has no input shape; "
                                  f"start it with an Input layer")
        model = source.module.Model(model.inputs, model.outputs, name=model.name)
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not isinstance(config, dict) or "input_layers" not in config:
        raise CheckpointError(f"{where}: the model is a subclassed {type(model).__name__} "
                              f"(its graph lives in Python code); {layers.POST_TRAINING}")
    return config


def _convert(model, source, target, read, where):
    graph = read(_functional_config(model, source, where))
    inputs, outputs, made = graphs.rebuild(
        graph, lambda entry: layers.make_input(entry, target),
        lambda entry: layers.make_layer(entry, source, target, where), where)
    rebuilt = target.module.Model(inputs, outputs, name=model.name)
    for name, layer in made.items():
        copy_weights(model.get_layer(name), layer, source, target, where)
    return rebuilt


def _relative(path, layer_name):
    """A weight's path inside its layer: ``query/kernel`` of ``model/mha/query/kernel``."""
    parts = path.split("/")
    return "/".join(parts[parts.index(layer_name) + 1:]) if layer_name in parts[:-1] \
        else parts[-1]


def copy_weights(source_layer, target_layer, source, target, where):
    """Assign each of ``source_layer``'s weights to the target weight at the same path."""
    renames = target.weight_renames.get(type(source_layer).__name__, {})
    found = {renames.get(path, path): w for path, w in (
        (_relative(source.weight_path(w), source_layer.name), w) for w in source_layer.weights)}
    wanted = {_relative(target.weight_path(w), target_layer.name): w
              for w in target_layer.weights}
    if set(found) != set(wanted) or len(found) != len(source_layer.weights):
        raise CheckpointError(
            f"{where}: layer {source_layer.name!r} ({type(source_layer).__name__}) has "
            f"weights {', '.join(sorted(found)) or 'none'} but its {target.name} rebuild has "
            f"{', '.join(sorted(wanted)) or 'none'}")
    for path, variable in found.items():
        value = np.asarray(variable.numpy())
        if tuple(wanted[path].shape) != value.shape:
            raise CheckpointError(
                f"{where}: layer {source_layer.name!r} weight {path} has shape "
                f"{value.shape} but its {target.name} rebuild expects "
                f"{tuple(wanted[path].shape)}")
        wanted[path].assign(value)


def outputs(model, inputs):
    """The model's outputs on ``inputs`` as a list of arrays (inference mode)."""
    import tensorflow as tf

    result = model(inputs, training=False)
    return [np.asarray(t) for t in tf.nest.flatten(result)]


def max_difference(a, b, inputs):
    """The largest absolute difference between two models' outputs on the same inputs."""
    first, second = outputs(a, inputs), outputs(b, inputs)
    if [x.shape for x in first] != [y.shape for y in second]:
        raise CheckpointError(f"the rebuilt model's outputs are shaped "
                              f"{[y.shape for y in second]}, not {[x.shape for x in first]}")
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
               for x, y in zip(first, second))
