"""One loaded version of one model: its signatures, in one runtime, as N replicas.

Every runtime answers the same way: the artifact gives the model's outputs and the
servable derives the task objective's answer from them (for classes ``probabilities``
(softmax) and ``label_id`` (argmax) beside ``logits``; a rating's ``prediction``; a click's
``logit`` and ``probability``), as the SavedModel's ``serving_default`` does, so a request
gets the same answer from TF, LiteRT or ONNX Runtime (within the artifact's measured
parity). Text models get a second signature, ``serving_text``, that takes sentences and
tokenizes them in the server. Models whose SavedModel looks raw features up in the graph
(``assets/features.json``) take raw features in ``serving_default`` in every runtime (the
server does the lookups for TFLite and ONNX) and the table rows in ``serving_ids``.
"""
import json
import os
import queue

import numpy as np

from tfdeploy.export import runtime as runtimes
from tfdeploy.export.savedmodel import FEATURES, IDS
from tfdeploy.objectives import OBJECTIVES, NumpyOps
from tfdeploy.serve import bundle
from tfdeploy.serve.features import FeatureEncoder

DEFAULT, TEXT = "serving_default", "serving_text"


class RequestError(ValueError):
    """Bad request: HTTP 400 / gRPC INVALID_ARGUMENT."""


class Signature:
    def __init__(self, inputs, method="tensorflow/serving/predict"):
        self.inputs = inputs  # {name: (dtype, shape with None for any)}
        self.method = method


def read_signatures(version_dir):
    """{signature name: inputs} of the SavedModel's serving signatures (the saved graph)."""
    import tensorflow as tf

    signatures = tf.saved_model.load(version_dir).signatures
    return {name: {k: (np.object_ if spec.dtype == tf.string else spec.dtype.as_numpy_dtype,
                       tuple(spec.shape.as_list()))
                   for k, spec in signatures[name].structured_input_signature[1].items()}
            for name in (DEFAULT, IDS) if name in signatures}


def read_features(version_dir):
    path = os.path.join(version_dir, "assets", FEATURES)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return FeatureEncoder(json.load(f))


class Servable:
    """A version ready to answer: ``run(inputs)`` takes a dict of batched arrays for
    ``serving_default`` and returns the outputs dict. Thread-safe: each call takes a free
    replica (interpreters and sessions are not re-entrant)."""

    def __init__(self, version_dir, artifact="auto", replicas=1, threads=0, devices=()):
        self.path = version_dir
        self.manifest = bundle.read(version_dir)
        self.artifact = bundle.choose(self.manifest, artifact)
        path = bundle.artifact_path(version_dir, self.manifest, self.artifact)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: the artifact {self.artifact} is missing")
        self.runtime = self.manifest["artifacts"][self.artifact].get("runtime", "tf")
        self.objective = OBJECTIVES[self.manifest.get("objective") or "accuracy"]
        found = read_signatures(version_dir)
        self.signatures = {name: Signature(inputs) for name, inputs in found.items()}
        self.encoder = read_features(version_dir)  # raw features -> table rows
        inputs = found[IDS] if self.encoder else found[DEFAULT]  # what the runtimes take
        text = self.manifest.get("text")
        self.tokenizer = make_tokenizer(version_dir, text) if text else None
        if self.tokenizer:
            self.signatures[TEXT] = Signature({"text": (np.object_, (None,))})
        self.labels = self.manifest.get("labels") or read_labels(version_dir)
        threads = threads or max(1, (os.cpu_count() or 1) // replicas)
        self._free = queue.Queue()
        for i in range(replicas):
            self._free.put(make_replica(runtimes.get(self.runtime), path, threads,
                                        devices[i] if devices else None))
        self.ragged = {name for name, (_, shape) in inputs.items()
                       if len(shape) > 1 and shape[1] is None}
        self.buckets = tuple(text.get("buckets") or ()) if text else ()
        self.pad_values = {name: (self.tokenizer.pad_id if text and text["inputs"].get(name)
                                  == "ids" else 0) for name in inputs}

    @property
    def output_specs(self):
        return self.objective.output_specs(len(self.labels or []) or None)

    def run(self, inputs):
        replica = self._free.get()
        try:
            logits = np.asarray(replica(inputs), np.float32)
        finally:
            self._free.put(replica)
        return self.objective.outputs(logits, NumpyOps)

    def encodes(self, sig_name):
        """Whether requests to ``sig_name`` carry raw features the server looks up."""
        return self.encoder is not None and sig_name == DEFAULT

    def encode(self, raw):
        return self.encoder(raw)

    def tokenize(self, texts):
        """Sentences -> the ``serving_default`` inputs (ragged: padded by the batcher)."""
        return self.tokenizer(texts)

    def warm_up(self):
        """One request per replica before the version takes traffic (first calls
        compile and allocate)."""
        rows = {}
        model_inputs = self.signatures[IDS if self.encoder else DEFAULT].inputs
        for name, (dtype, shape) in model_inputs.items():
            dims = [1] + [8 if d is None else d for d in shape[1:]]
            rows[name] = np.ones(dims, dtype)
        for _ in range(self._free.qsize()):
            self.run(rows)


def make_replica(runtime, path, threads, device):
    if device is None:
        return runtime.runner(path, threads)
    import tensorflow as tf

    with tf.device(device):  # the SavedModel's variables and ops on this device
        run = runtime.runner(path, threads)

    def on_device(inputs):
        with tf.device(device):
            return run(inputs)
    return on_device


def read_labels(version_dir):
    path = os.path.join(version_dir, "assets", "labels.txt")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


class WordPiece:
    """Sentences to token-id inputs, as the model plugin encoded its training data."""

    def __init__(self, vocab_path, lowercase, pad_id, inputs, max_length):
        from tokenizers import BertWordPieceTokenizer

        self._tok = BertWordPieceTokenizer(vocab_path, lowercase=lowercase,
                                           strip_accents=lowercase)
        self._tok.enable_truncation(max_length)
        self.pad_id, self.inputs = pad_id, inputs

    def __call__(self, texts):
        """One dict per text of [1, length] arrays (each its own length)."""
        rows = []
        for encoding in self._tok.encode_batch(list(texts)):
            ids = np.asarray([encoding.ids], np.int32)
            derived = {"ids": ids, "mask": np.ones_like(ids), "zeros": np.zeros_like(ids)}
            rows.append({name: derived[kind] for name, kind in self.inputs.items()})
        return rows


def make_tokenizer(version_dir, text):
    if text.get("tokenizer") != "wordpiece":
        raise ValueError(f"unknown tokenizer {text.get('tokenizer')!r} in the manifest")
    vocab = os.path.join(version_dir, bundle.FOLDER, text["vocab"])
    return WordPiece(vocab, bool(text["lowercase"]), int(text["pad_id"]), text["inputs"],
                     int(text["max_length"]))
