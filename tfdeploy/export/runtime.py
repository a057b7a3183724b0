"""What runs an artifact. Each module that writes a kind of file registers the runtime that
opens it (``savedmodel``: TF, ``tflite``: LiteRT, ``onnx``: ONNX Runtime); a format names
its runtime, and an artifact whose format is not known (a file handed to a bench script)
asks every runtime whether the file is its own, by the file's content."""

_RUNTIMES = {}


class Runtime:
    """Opens artifacts of one kind. Subclasses set ``name`` and implement the methods."""

    name = ""

    def recognizes(self, path):
        """Whether ``path`` is an artifact this runtime opens (read from the file)."""
        raise NotImplementedError

    def runner(self, path, threads=2):
        """Callable: dict of numpy model inputs -> the model's raw outputs (numpy)."""
        raise NotImplementedError

    def input_specs(self, path):
        """{input name: (shape, None for a free dim; numpy dtype)} of the artifact."""
        raise NotImplementedError


def register_runtime(cls):
    if cls.name in _RUNTIMES:
        raise ValueError(f"runtime {cls.name!r} registered twice")
    _RUNTIMES[cls.name] = cls()
    return cls


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
