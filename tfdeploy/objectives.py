"""What a task optimises and reports: its loss, its metric and which way is better.

The data source names its task's objective (``Task.objective``); training, keep-best,
distillation, the gates and the report ask it instead of assuming class accuracy.
Records keep the metric under its own name (``metrics: {"rmse": ...}``) and say which
one is primary (``"metric": "rmse"``); :func:`value` and :func:`drop` read them.
"""
import numpy as np


def _tf():
    """TensorFlow, imported when training or a SavedModel needs it (the server does not)."""
    import tensorflow as tf

    return tf


def _keras():
    import tf_keras as keras

    return keras


class Objective:
    name = ""                  # the primary metric's key in records and fit logs
    raw_output = ""            # the served output that carries the model's own values
    higher_is_better = True
    label_dtype = np.int32
    agreement = True           # parity reports prediction agreement (classes only)

    def output_width(self, num_labels):
        return num_labels

    def loss(self):
        raise NotImplementedError

    def keras_metrics(self):
        raise NotImplementedError

    def scores(self, outputs, labels):
        """{metric name: value} on numpy outputs; the primary one first."""
        raise NotImplementedError

    def per_example(self, labels, outputs):
        """The hard loss per example, with TF ops (distillation)."""
        raise NotImplementedError

    def soft(self, student, teacher, temperature):
        """The loss to the teacher's outputs per example, with TF ops (distillation)."""
        raise NotImplementedError

    # What a served model answers: output name -> (dtype, per-row shape suffix); the first
    # is the model's own output (logits, a rating), the rest derive from it.
    def outputs(self, raw, xp):
        """{output name: array} from the model's raw outputs [N, width]; ``xp`` is numpy,
        or a namespace with ``softmax``/``sigmoid``/``argmax``/``reshape`` (TF ops)."""
        raise NotImplementedError

    def output_specs(self, width):
        """{output name: (TF dtype name, shape)} for signature metadata."""
        raise NotImplementedError

    def drop(self, baseline, value):
        """How much worse ``value`` is than ``baseline`` (positive = worse)."""
        return baseline - value if self.higher_is_better else value - baseline

    def better(self, a, b):
        return a > b if self.higher_is_better else a < b

    @property
    def mode(self):
        return "max" if self.higher_is_better else "min"


class Classification(Objective):
    name, raw_output = "accuracy", "logits"

    def loss(self):
        keras = _keras()
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def keras_metrics(self):
        keras = _keras()
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def scores(self, outputs, labels):
        return {"accuracy": float(np.mean(np.argmax(outputs, axis=-1) == labels))}

    def per_example(self, labels, outputs):
        keras = _keras()
        return keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True)

    def outputs(self, raw, xp):
        return {"logits": raw, "probabilities": xp.softmax(raw),
                "label_id": xp.argmax(raw)}

    def output_specs(self, width):
        return {"logits": ("DT_FLOAT", (None, width)),
                "probabilities": ("DT_FLOAT", (None, width)), "label_id": ("DT_INT32", (None,))}

    def soft(self, student, teacher, t):
        tf = _tf()
        soft_teacher = tf.nn.softmax(teacher / t)
        log_student = tf.nn.log_softmax(student / t)
        return tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + 1e-12) - log_student),
                             axis=-1) * t * t


class OneOutput(Objective):
    """A model with one real output per example and real-valued labels (no classes to
    agree on)."""

    label_dtype = np.float32
    agreement = False

    def output_width(self, num_labels):
        return 1


class Regression(OneOutput):
    """One real output (e.g. a rating); RMSE, lower is better."""

    name, raw_output = "rmse", "prediction"
    higher_is_better = False

    def loss(self):
        keras = _keras()
        return keras.losses.MeanSquaredError()

    def keras_metrics(self):
        keras = _keras()
        return [keras.metrics.RootMeanSquaredError(name="rmse")]

    def outputs(self, raw, xp):
        return {"prediction": xp.reshape(raw, [-1])}

    def output_specs(self, width):
        return {"prediction": ("DT_FLOAT", (None,))}

    def scores(self, outputs, labels):
        err = np.reshape(outputs, -1).astype(np.float64) - labels
        return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}

    def per_example(self, labels, outputs):
        tf = _tf()
        return tf.square(tf.reshape(outputs, [-1]) - tf.cast(tf.reshape(labels, [-1]),
                                                              outputs.dtype))

    def soft(self, student, teacher, t):
        tf = _tf()
        return tf.square(tf.reshape(student, [-1]) - tf.reshape(teacher, [-1]))


class Click(OneOutput):
    """One logit for a yes/no event (e.g. rating >= 4); AUC, higher is better."""

    name, raw_output = "auc", "logit"

    def loss(self):
        keras = _keras()
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def keras_metrics(self):
        keras = _keras()
        return [keras.metrics.AUC(from_logits=True, name="auc")]

    def outputs(self, raw, xp):
        logit = xp.reshape(raw, [-1])
        return {"logit": logit, "probability": xp.sigmoid(logit)}

    def output_specs(self, width):
        return {"logit": ("DT_FLOAT", (None,)), "probability": ("DT_FLOAT", (None,))}

    def scores(self, outputs, labels):
        logits = np.reshape(outputs, -1).astype(np.float64)
        p = 1 / (1 + np.exp(-logits))
        eps = 1e-7
        log_loss = -np.mean(labels * np.log(p + eps) + (1 - labels) * np.log(1 - p + eps))
        return {"auc": auc(logits, labels), "log_loss": float(log_loss)}

    def per_example(self, labels, outputs):
        tf = _tf()
        return tf.nn.sigmoid_cross_entropy_with_logits(
            tf.cast(tf.reshape(labels, [-1]), outputs.dtype), tf.reshape(outputs, [-1]))

    def soft(self, student, teacher, t):
        tf = _tf()
        return tf.nn.sigmoid_cross_entropy_with_logits(
            tf.sigmoid(tf.reshape(teacher, [-1]) / t), tf.reshape(student, [-1]) / t) * t * t


def auc(scores, labels):
    """ROC AUC by ranks (ties share their mean rank)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    positives = labels > 0.5
    n_pos, n_neg = positives.sum(), (~positives).sum()
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


OBJECTIVES = {o.name: o for o in (Classification(), Regression(), Click())}
CLASSIFICATION = OBJECTIVES["accuracy"]


class NumpyOps:
    """The few ops ``Objective.outputs`` needs, on numpy arrays (the server's side)."""

    @staticmethod
    def softmax(x):
        shifted = np.exp(x - x.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)

    @staticmethod
    def sigmoid(x):
        return (1 / (1 + np.exp(-x))).astype(np.float32)

    @staticmethod
    def argmax(x):
        return x.argmax(-1).astype(np.int32)

    @staticmethod
    def reshape(x, shape):
        return np.reshape(x, shape)


class TFOps:
    """The same ops in TensorFlow (the SavedModel's signature)."""

    @staticmethod
    def softmax(x):
        return _tf().nn.softmax(x)

    @staticmethod
    def sigmoid(x):
        return _tf().sigmoid(x)

    @staticmethod
    def argmax(x):
        tf = _tf()
        return tf.argmax(x, axis=-1, output_type=tf.int32)

    @staticmethod
    def reshape(x, shape):
        return _tf().reshape(x, shape)


def of(record):
    return OBJECTIVES[record.get("metric", "accuracy")]


def value(record):
    """A record's primary metric."""
    return record["metrics"][of(record).name]


def drop(record, baseline):
    """How much worse the record is than ``baseline`` (positive = worse), or None."""
    return None if baseline is None else of(record).drop(baseline, value(record))

