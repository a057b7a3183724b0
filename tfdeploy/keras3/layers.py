"""Which built-in layers cross between Keras 3 and tf-keras, and how a layer's config does.

The two frameworks share most layer classes and config keys. What differs is handled here:
the serialized form of nested objects (Keras 3 writes ``{"module", "class_name", "config",
"registered_name"}``, dtype as a ``DTypePolicy``), a few renamed keys, and keys one side
has and the other lacks. A key the target lacks is dropped only while it holds the source
class's own default (the behaviour both share); any other value is refused by name. The
rebuilt model's outputs are compared with the source's before anything uses it, so a
difference this table misses cannot pass silently.
"""
import inspect

from tfdeploy.errors import CheckpointError

SUPPORTED = frozenset("""
Dense EinsumDense Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose DepthwiseConv1D
DepthwiseConv2D SeparableConv1D SeparableConv2D BatchNormalization LayerNormalization
GroupNormalization UnitNormalization Embedding MaxPooling1D MaxPooling2D MaxPooling3D
AveragePooling1D AveragePooling2D AveragePooling3D GlobalAveragePooling1D
GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D
GlobalMaxPooling3D Dropout SpatialDropout1D SpatialDropout2D GaussianNoise GaussianDropout
AlphaDropout ActivityRegularization Activation ReLU LeakyReLU PReLU ELU Softmax Add Subtract
Multiply Average Maximum Minimum Concatenate Dot Reshape Flatten Permute RepeatVector
ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D
UpSampling2D UpSampling3D MultiHeadAttention Attention AdditiveAttention Identity Rescaling
Masking
""".split())

# Keras 3 key -> tf-keras key, per class.
RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 weight -> tf-keras weight, per class.
WEIGHTS_RENAMED = {"DepthwiseConv1D": {"kernel": "depthwise_kernel"},
                   "DepthwiseConv2D": {"kernel": "depthwise_kernel"}}
# Values that are the only behaviour of a side that has no key for them.
IMPLIED = {"data_format": "channels_last"}
# Shapes a layer records for building; both frameworks learn them again when called.
BUILD_SHAPES = frozenset({"query_shape", "key_shape", "value_shape", "input_length",
                          "input_shape", "batch_input_shape", "batch_size", "input_dim"})
# Keyword arguments every layer takes (base-class **kwargs, absent from the signatures).
BASE_KEYS = frozenset({"name", "dtype", "trainable", "activity_regularizer"})
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
POST_TRAINING = ("tfdeploy rebuilds built-in Keras layers only; with no training stage "
                 "(stages: []) the model takes the post-training path (every export)")


def _one_axis(config):
    """tf-keras writes BatchNormalization's axis as a list; Keras 3 takes one int."""
    if isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]


def _unbuilt_attention(config):
    """tf-keras' MultiHeadAttention.from_config needs its build shapes (None: build on call)."""
    for key in ("query_shape", "key_shape", "value_shape"):
        config.setdefault(key, None)


# (target, class) -> what that class's config needs beyond the shared keys.
FIXES = {("Keras 3", "BatchNormalization"): _one_axis,
         ("tf-keras", "MultiHeadAttention"): _unbuilt_attention}


class Framework:
    """One side of the bridge: Keras 3 (``import keras``) or tf-keras (``import tf_keras``)."""

    def __init__(self, name, module, renames, weight_renames, weight_path):
        self.name, self.module, self.renames = name, module, renames
        self.weight_renames, self._weight_path = weight_renames, weight_path

    def layer_class(self, class_name):
        return getattr(self.module.layers, class_name, None)

    def weight_path(self, variable):
        """The variable's path, ``layer/.../weight`` (its place inside the model)."""
        return self._weight_path(variable).split(":")[0]


def keras3():
    import keras

    return Framework("Keras 3", keras, _reversed(RENAMED), _reversed(WEIGHTS_RENAMED),
                     lambda v: v.path)


def tf_keras():
    import tf_keras as module

    return Framework("tf-keras", module, RENAMED, WEIGHTS_RENAMED, lambda v: v.name)


def _reversed(table):
    return {cls: {v: k for k, v in names.items()} for cls, names in table.items()}


def refusal(entry, where, why):
    return CheckpointError(f"{where}: layer {entry.name!r} ({entry.class_name}) {why}; "
                           f"{POST_TRAINING}")


def check_supported(entry, where):
    """Refuse, by name, a layer no built-in class of the other framework can rebuild."""
    if entry.class_name == "Lambda" or entry.class_name == "TFOpLambda":
        raise refusal(entry, where, "holds Python code, which is never rebuilt from a file")
    if entry.class_name in MODEL_CLASSES:
        raise refusal(entry, where, "is a nested model; call its layers in the outer model "
                                    "instead")
    if entry.registered_name or not entry.module.startswith(("keras.layers",
                                                             "keras.src.layers")):
        kind = "a Keras op called on Keras tensors" if ".ops" in entry.module else \
            "a custom layer"
        raise refusal(entry, where, f"is {kind} (module {entry.module or 'unknown'})")
    if entry.class_name not in SUPPORTED:
        raise refusal(entry, where, "is a layer class the bridge does not rebuild")


def _defaults(cls):
    """{parameter: default} the class's constructor takes: its own, and its bases' for as
    long as each ``__init__`` passes ``**kwargs`` on (plus the base layer's keys then)."""
    found = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                found.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return found
    return {**{key: None for key in BASE_KEYS}, **found}


def _same(a, b):
    norm = (lambda v: list(v) if isinstance(v, tuple) else v)
    return norm(a) == norm(b)


def _unset(key, value, defaults):
    """The option holds its default: the behaviour the other side always has, the class's
    own default, or for an option the signature does not name (taken from ``**kwargs``)
    an empty one (None or False: the feature is off)."""
    if key in IMPLIED and IMPLIED[key] == value:
        return True
    if key in defaults:
        return _same(value, defaults[key])
    return value is None or value is False


def plain_object(value):
    """A nested serialized object in the form both frameworks read: a dtype policy as its
    name, a built-in activation as its name, an initializer/regularizer/constraint as
    ``{"class_name", "config"}`` with unset (None) entries left out."""
    if not (isinstance(value, dict) and "class_name" in value):
        return value
    config = value.get("config")
    if value["class_name"] in ("DTypePolicy", "Policy", "FloatDTypePolicy"):
        return config["name"] if isinstance(config, dict) else config
    if value["class_name"] == "function" and isinstance(config, str):
        return config
    if isinstance(config, dict):
        config = {k: plain_object(v) for k, v in config.items() if v is not None}
    return {"class_name": value["class_name"], "config": config}


def translate(entry, source, target, where):
    """``entry``'s config for ``target``'s class of the same name."""
    check_supported(entry, where)
    target_cls, source_cls = target.layer_class(entry.class_name), \
        source.layer_class(entry.class_name)
    if target_cls is None or source_cls is None:
        raise refusal(entry, where, f"has no {target.name} class of that name")
    own, source_defaults = _defaults(target_cls), _defaults(source_cls)
    accepted = set(own)
    renames = target.renames.get(entry.class_name, {})
    config = {}
    for key, value in entry.config.items():
        key_there = renames.get(key, key)
        if key in BUILD_SHAPES and key_there not in own:
            continue
        if key_there in accepted:
            config[key_there] = plain_object(value)
        elif key in BUILD_SHAPES or key.endswith("_initializer") or _unset(
                key, value, source_defaults):
            continue  # initializers never run: every weight is copied
        else:
            shown = f"{key}={value!r}" if not isinstance(value, (dict, list)) else key
            raise refusal(entry, where, f"sets {shown}, which {target.name} has no "
                                        f"option for")
    config["name"] = entry.name
    fix = FIXES.get((target.name, entry.class_name))
    if fix:
        fix(config)
    _check_activation(entry, config, target, where)
    return target_cls, config


def _check_activation(entry, config, target, where):
    activation = config.get("activation")
    if isinstance(activation, str):
        try:
            target.module.activations.get(activation)
        except (ValueError, TypeError):
            raise refusal(entry, where, f"uses activation {activation!r}, which "
                                        f"{target.name} does not have") from None
    elif activation is not None:
        raise refusal(entry, where, "uses an activation that is not a built-in one")


def make_layer(entry, source, target, where):
    cls, config = translate(entry, source, target, where)
    try:
        return cls.from_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise refusal(entry, where, f"cannot be made in {target.name} "
                                    f"({_short(e.__cause__ or e)})") from None


def _short(error):
    """An error's first line without the config Keras appends to it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for marker in (" using config=", " config=", " Full object config", "{"):
        text = text.split(marker)[0]
    return text[:160].rstrip(" :,")


def make_input(entry, target):
    config = entry.config
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    dtype = plain_object(config.get("dtype")) or "float32"
    return target.module.Input(batch_shape=tuple(shape), dtype=dtype, name=entry.name,
                               sparse=bool(config.get("sparse")))
