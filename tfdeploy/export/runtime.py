"""What runs an artifact. Each module that writes a kind of file registers the runtime that
opens it (``savedmodel``: TF, ``tflite``: LiteRT, ``onnx``: ONNX Runtime); a format names
its runtime, and an artifact whose format is not known (a file handed to a bench script)
asks every runtime whether the file is its own, by the file's content."""
import dataclasses
import os
from typing import Callable

_RUNTIMES = {}


@dataclasses.dataclass(frozen=True)
class Runtime:
    name: str
    recognizes: Callable    # path -> whether it is an artifact this runtime opens
    runner: Callable        # (path, threads) -> callable: dict of numpy inputs -> outputs
    input_specs: Callable   # path -> {input name: (shape, None for a free dim; dtype)}


def register_runtime(name, recognizes, runner, input_specs):
    if name in _RUNTIMES:
        raise ValueError(f"runtime {name!r} registered twice")
    _RUNTIMES[name] = Runtime(name, recognizes, runner, input_specs)


def get(name):
    if name not in _RUNTIMES:
        raise ValueError(f"no runtime {name!r} (runtimes: {', '.join(sorted(_RUNTIMES))})")
    return _RUNTIMES[name]


def of_file(path):
    """The runtime that recognizes the artifact at ``path``."""
    for runtime in _RUNTIMES.values():
        if runtime.recognizes(path):
            return runtime
    raise ValueError(f"{path}: no runtime opens it (not a SavedModel, TFLite or ONNX file)")


def starts_with(path, offset, magic):
    """Whether the file at ``path`` holds ``magic`` at byte ``offset``."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(offset + len(magic))[offset:] == magic
