"""The serving operations both front ends (REST and gRPC) call: status, metadata, predict
and classify, on numpy inputs checked against the signature."""
import functools

import numpy as np

from tfdeploy.serve.manager import NotFound
from tfdeploy.serve.servable import DEFAULT, TEXT, RequestError

MAX_TEXT_CHARS = 100_000


def status(manager, name, version=None):
    """[(version, state, error)] of a model (one version when given)."""
    model = manager.model(name)
    versions = sorted(model.versions.items(), reverse=True)
    if version is not None:
        versions = [(n, v) for n, v in versions if n == version]
        if not versions:
            raise NotFound(f"Could not find version {version} of model {name}")
    if not versions:
        raise NotFound(f"Could not find any versions of model {name}")
    return [(n, v.state, v.error) for n, v in versions]


def signature(servable, name):
    name = name or DEFAULT
    if name not in servable.signatures:
        raise NotFound(f"Serving signature name: \"{name}\" not found in signature def "
                       f"(it has: {', '.join(servable.signatures)})")
    return name, servable.signatures[name]


def metadata(servable):
    """{signature: {"inputs": {name: (dtype name, shape)}, "outputs": {...}, "method"}}."""
    out = {}
    outputs = servable.output_specs
    for name, sig in servable.signatures.items():
        inputs = {k: (dtype_name(dtype), shape) for k, (dtype, shape) in sig.inputs.items()}
        out[name] = {"inputs": inputs, "outputs": outputs, "method": sig.method}
    return out


def dtype_name(dtype):
    return {np.int32: "DT_INT32", np.int64: "DT_INT64", np.float32: "DT_FLOAT",
            np.float64: "DT_DOUBLE", np.object_: "DT_STRING", np.uint8: "DT_UINT8"}.get(
        np.dtype(dtype).type, f"DT_{np.dtype(dtype).name.upper()}")


def to_rows(servable, sig_name, inputs):
    """Request inputs ({name: array-like}) -> the list of input dicts the runner takes,
    checked against the signature: names, dtypes, ranks, fixed dims, equal row counts."""
    sig = servable.signatures[sig_name]
    missing = sorted(set(sig.inputs) - set(inputs))
    extra = sorted(set(inputs) - set(sig.inputs))
    if missing or extra:
        raise RequestError(f"inputs {sorted(inputs)} do not match signature {sig_name!r}: "
                           f"{'missing ' + ', '.join(missing) if missing else ''}"
                           f"{'; ' if missing and extra else ''}"
                           f"{'unknown ' + ', '.join(extra) if extra else ''}")
    if sig_name == TEXT:
        return servable.tokenize(texts(inputs["text"]))
    arrays, rows = {}, set()
    for name, value in inputs.items():
        dtype, shape = sig.inputs[name]
        arrays[name] = strings(name, value) if np.dtype(dtype) == np.object_ else \
            array(name, value, dtype, shape)
        rows.add(len(arrays[name]))
    if len(rows) != 1:
        raise RequestError(f"inputs have different numbers of rows: "
                           f"{ {k: len(v) for k, v in arrays.items()} }")
    if servable.encodes(sig_name):
        return [servable.encode(arrays)]
    return [arrays]


def utf8(item, what):
    """``item`` with bytes decoded (gRPC string tensors arrive as bytes)."""
    if not isinstance(item, bytes):
        return item
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{what}: not valid UTF-8") from None


def strings(name, value):
    """A raw feature: one string (or number, read as its text) per row."""
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(items, list) or not items:
        raise RequestError(f"input {name}: expected a non-empty list of values")
    out = []
    for item in map(lambda i: utf8(i, f"input {name}"), items):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise RequestError(f"input {name}: expected a string or number per row, got "
                               f"{type(item).__name__}")
        if len(str(item)) > MAX_TEXT_CHARS:
            raise RequestError(f"input {name}: a value over {MAX_TEXT_CHARS} characters")
        out.append(item if isinstance(item, str) else
                   str(int(item)) if float(item).is_integer() else str(item))
    return np.asarray(out, dtype=object)


def texts(value):
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(items, (str, bytes)):
        items = [items]
    if not isinstance(items, list) or not items:
        raise RequestError("text: expected a non-empty list of strings")
    out = []
    for item in map(lambda i: utf8(i, "text"), items):
        if not isinstance(item, str):
            raise RequestError(f"text: expected strings, got {type(item).__name__}")
        if len(item) > MAX_TEXT_CHARS:
            raise RequestError(f"text: a string of {len(item)} characters is over the "
                               f"{MAX_TEXT_CHARS} limit")
        out.append(item)
    return out


def array(name, value, dtype, shape):
    """``value`` as a ``dtype`` array checked against the signature's ``shape``: numbers
    only, integers for integer inputs, within the dtype's range, rank and fixed dims as
    the signature says, at least one row."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise RequestError(f"input {name}: not a rectangular array") from None
    want, kind = np.dtype(dtype), arr.dtype.kind
    if kind == "O" or kind in "USV":
        raise RequestError(f"input {name}: expected numbers ({dtype_name(want)}), got "
                           f"{'ragged lists' if kind == 'O' else 'strings'}")
    integer = want.kind in "iu"
    if kind == "b" or (integer and kind == "f"
                       and not np.all(np.isfinite(arr) & (arr == np.round(arr)))):
        raise RequestError(f"input {name}: expected {dtype_name(want)}, got "
                           f"{'booleans' if kind == 'b' else 'fractions'}")
    if arr.ndim != len(shape):
        raise RequestError(f"input {name}: expected rank {len(shape)} (shape "
                           f"{list(d if d is not None else -1 for d in shape)}), got shape "
                           f"{list(arr.shape)}")
    if arr.shape[0] == 0:
        raise RequestError(f"input {name}: empty batch")
    for i, (need, got) in enumerate(zip(shape[1:], arr.shape[1:]), start=1):
        if need is not None and need != got or got == 0:
            raise RequestError(f"input {name}: dimension {i} is {got}, the signature wants "
                               f"{need if need is not None else 'at least 1'}")
    if integer:
        low, high = int_range(want)
        if arr.dtype != want and (arr.min() < low or arr.max() > high):
            raise RequestError(f"input {name}: values outside {dtype_name(want)}")
    elif kind == "f" and not np.all(np.isfinite(arr)):
        raise RequestError(f"input {name}: NaN or infinite values")
    return arr.astype(want, copy=False)


@functools.lru_cache(maxsize=None)
def int_range(dtype):
    info = np.iinfo(dtype)
    return info.min, info.max


async def answer(manager, name, version, sig_name, inputs):
    """(outputs {name: array}, version number, labels) from the version that answered
    (latest when ``version`` is None)."""
    with manager.model(name).using(version) as v:
        sig_name, _ = signature(v.servable, sig_name)
        rows = to_rows(v.servable, sig_name, inputs)
        parts = await v.runner.submit(rows)
        outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return outputs, v.number, v.servable.labels


async def predict(manager, name, version, sig_name, inputs):
    """Outputs {name: array} for ``inputs``, and the version number that answered."""
    outputs, number, _ = await answer(manager, name, version, sig_name, inputs)
    return outputs, number


def classify_signature(servable, requested, examples):
    """(name, Signature) for classifying ``examples`` (dicts of features): the one asked
    for, else ``serving_text`` when every example is only ``text``, else the default."""
    text = TEXT in servable.signatures and all(set(e) == {"text"} for e in examples)
    return signature(servable, requested or (TEXT if text else ""))


def check_method(manager, name, version, method):
    """Refuse :classify on a model that does not classify, :regress on one that does."""
    with manager.model(name).using(version) as v:
        objective = v.servable.objective
    classifier = objective.name == "accuracy"
    if (method == "classify") != classifier:
        what = "is a classifier" if classifier else f"predicts a {objective.raw_output}"
        use = ":classify" if classifier else ":regress"
        raise RequestError(f"this model {what}; use {use} or :predict")


async def regress(manager, name, version, sig_name, examples):
    """[one float per example] (the rating, or a click's probability), and the version."""
    outputs, number, _ = await answer(manager, name, version, sig_name, examples)
    value = outputs.get("prediction", outputs.get("probability"))
    return [float(x) for x in value], number


async def classify(manager, name, version, sig_name, examples):
    """[[(label, score)] per example] in label order, and the version number."""
    outputs, number, labels = await answer(manager, name, version, sig_name, examples)
    labels = labels or [str(i) for i in range(outputs["probabilities"].shape[1])]
    return [[(labels[i], float(p)) for i, p in enumerate(row)]
            for row in outputs["probabilities"]], number
