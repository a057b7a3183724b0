"""`distill`: train a smaller student on the teacher's softened predictions.

loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher/T) ||
softmax(student/T)). The teacher is the model from the previous stage (or a saved model);
it never trains and its logits are computed on the fly, inside the same strategy scope, so
every replica sees the same frozen teacher. A BERT student can start from chosen teacher
layers (``student_layers: [0, 2, 4]``); otherwise ``student`` gives model fields for a
fresh one.
"""
import dataclasses
import functools
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tf_keras as keras

from tfdeploy import models
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.stages import STAGES, Stage
from tfdeploy.stages.teacher import load_teacher
from tfdeploy.training import FitConfig, fit


class HiddenStates:
    """Pairs student hidden states with teacher ones (uniform mapping, as TinyBERT: student
    layer j learns teacher layer (j+1)*T/S - 1; embeddings learn embeddings), a linear
    projection where widths differ, and the mean squared error over real tokens."""

    def __init__(self, plugin, student, teacher, weight):
        s_states, t_states = plugin.hidden_states(student), plugin.hidden_states(teacher)
        s_layers, t_layers = len(s_states) - 1, len(t_states) - 1
        pairs = [(0, 0)] + [(j + 1, round((j + 1) * t_layers / s_layers))
                            for j in range(s_layers)]
        self.pairs, self.weight, self.row_weights = pairs, weight, plugin.row_weights
        self.student = keras.Model(student.inputs, [student.output] +
                                   [s_states[s] for s, _ in pairs])
        self.teacher = keras.Model(teacher.inputs, [teacher.output] +
                                   [t_states[t] for _, t in pairs])
        self.projections = [None] * len(pairs)
        for k, (s, t) in enumerate(pairs):
            if s_states[s].shape[-1] != t_states[t].shape[-1]:
                proj = keras.layers.Dense(t_states[t].shape[-1], name=f"hidden_projection_{s}")
                proj.build(s_states[s].shape)  # built now, so BackupAndRestore can save it
                self.projections[k] = proj

    def loss(self, inputs, student_states, teacher_states):
        rows = self.row_weights(inputs)
        total = 0.0
        for proj, s, t in zip(self.projections, student_states, teacher_states):
            s = proj(s) if proj is not None else s
            total += tf.reduce_sum(tf.square(s - t) * rows) / (
                tf.reduce_sum(rows) * tf.cast(tf.shape(s)[-1], tf.float32))
        return total / len(self.pairs)

    def variables(self):
        return [v for p in self.projections if p is not None for v in p.trainable_variables]


class Distiller(keras.Model):
    """Wraps student and frozen teacher; ``fit`` trains the student on the mixed loss
    (plus ``hidden.weight`` x the hidden-state MSE when ``hidden`` is given)."""

    def __init__(self, student, teacher, alpha, temperature, global_batch, hidden=None,
                 augment=None, gradient_hook=None):
        super().__init__()
        self.gradient_hook = gradient_hook  # sees each step's gradients (prune's scores)
        self.augment = augment  # inputs -> a perturbed copy, learned from the teacher only
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.alpha, self.temperature, self.global_batch = alpha, temperature, global_batch
        self.hidden = hidden
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.hidden_tracker = keras.metrics.Mean(name="hidden_mse")
        if hidden is not None:
            self.projections = [p for p in hidden.projections if p is not None]  # tracked

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def losses_per_example(self, y, student_logits, teacher_logits):
        t = self.temperature
        ce = keras.losses.sparse_categorical_crossentropy(y, student_logits, from_logits=True)
        soft_teacher = tf.nn.softmax(teacher_logits / t)
        log_student = tf.nn.log_softmax(student_logits / t)
        kl = tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + 1e-12) - log_student),
                           axis=-1) * t * t
        return ce, kl

    def train_step(self, data):
        x, y = data
        labelled, copies = tf.shape(y)[0], 1
        if self.augment is not None:  # the batch, then its perturbed copy
            copy = self.augment(x)
            x = {k: tf.concat([v, copy[k]], 0) for k, v in x.items()}
            copies = 2
        hidden = self.hidden
        if hidden is None:
            teacher_logits = tf.stop_gradient(self.teacher(x, training=False))
        else:
            teacher_logits, *teacher_states = [
                tf.stop_gradient(t) for t in hidden.teacher(x, training=False)]
        with tf.GradientTape() as tape:
            if hidden is None:
                student_logits = self.student(x, training=True)
            else:
                student_logits, *student_states = hidden.student(x, training=True)
            ce, kl = self.losses_per_example(y, student_logits[:labelled],
                                             teacher_logits[:labelled])
            per_example = self.alpha * ce + (1 - self.alpha) * kl
            if copies == 2:  # no labels for the copies: the teacher's KL only
                _, kl_copy = self.losses_per_example(y, student_logits[labelled:],
                                                     teacher_logits[labelled:])
                per_example = tf.concat([per_example, (1 - self.alpha) * kl_copy], 0)
                kl = tf.concat([kl, kl_copy], 0)
            # Scaled by the *global* batch: replicas' gradients are summed.
            loss = tf.nn.compute_average_loss(per_example,
                                              global_batch_size=copies * self.global_batch)
            if hidden is not None:
                mse = hidden.loss(x, student_states, teacher_states)
                loss += tf.nn.scale_regularization_loss(hidden.weight * mse)
        variables = self.student.trainable_variables + (hidden.variables() if hidden else [])
        grads = tape.gradient(loss, variables)
        if self.gradient_hook is not None:
            self.gradient_hook(variables, grads)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.compiled_metrics.update_state(y, student_logits[:labelled])
        self.ce_tracker.update_state(ce)
        self.kl_tracker.update_state(kl)
        out = {"distill_loss": self.ce_tracker.result() * self.alpha +
               self.kl_tracker.result() * (1 - self.alpha),
               "ce": self.ce_tracker.result(), "kl": self.kl_tracker.result()}
        if hidden is not None:
            self.hidden_tracker.update_state(mse)
            out["hidden_mse"] = self.hidden_tracker.result()
        return {**out, **{m.name: m.result() for m in self.compiled_metrics.metrics}}

    def test_step(self, data):
        x, y = data
        logits = self.student(x, training=False)
        self.compiled_loss(y, logits)
        self.compiled_metrics.update_state(y, logits)
        return {m.name: m.result() for m in
                self.compiled_loss.metrics + self.compiled_metrics.metrics}

    @property
    def metrics(self):
        return [self.ce_tracker, self.kl_tracker, self.hidden_tracker] + super().metrics


def compile_distiller(distiller, optimizer, context):
    with context.strategy.scope():
        distiller.compile(optimizer=optimizer,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def fit_distilled(student, teacher, context, cfg, callbacks=(), hidden=None, augment=None,
                  gradient_hook=None):
    """Fit ``student`` on cfg.alpha * CE + (1 - cfg.alpha) * T^2 * KL to the frozen
    ``teacher`` (+ ``hidden``'s loss; + the KL on ``augment``ed copies of each batch); the
    distill stage, and qat and prune to stay close to the model entering the stage.
    ``gradient_hook(variables, grads)`` sees every step's gradients. Returns fit's history."""
    with context.strategy.scope():
        distiller = Distiller(student, teacher, cfg.alpha, cfg.temperature,
                              context.global_batch(cfg.batch_size), hidden, augment,
                              gradient_hook)
        _, sample = next(context.validation.numpy_batches(2))
        distiller(sample)  # built before fit, so BackupAndRestore can checkpoint it
    return fit(distiller, context, cfg, callbacks, compile_fn=compile_distiller)


def kl_first_last(history):
    return [history["kl"][0], history["kl"][-1]]


@STAGES.register("distill")
class Distill(Stage):
    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig):
        """Knowledge distillation into a smaller student. Fit fields as in train."""

        teacher: str = field("previous", doc="'previous': the model from the stage before; "
                                             "an earlier stage's name; or a stage "
                                             "directory / .h5 file.")
        student_layers: Optional[List[int]] = field(
            None, doc="BERT: teacher encoder layers that initialise the student, in order "
                      "(e.g. [0, 2, 4] for a 3-layer student).")
        student: Dict[str, Any] = field(factory=dict, doc="Model fields for a fresh student "
                                                          "(same type as the recipe's model) "
                                                          "when student_layers is not set.")
        alpha: float = field(0.5, ge=0, le=1, doc="Weight of the label cross-entropy; "
                                                  "1 - alpha weighs the distillation KL.")
        temperature: float = field(2.0, gt=0, doc="Softmax temperature for the KL term.")
        hidden_weight: float = field(0.0, ge=0, doc="Weight of a hidden-state loss: MSE "
                                                    "between student layer j and teacher "
                                                    "layer (j+1)*T/S - 1 (and embeddings), "
                                                    "over real tokens, with a learned "
                                                    "projection where widths differ. "
                                                    "0 = off.")
        learning_rate: float = field(1e-4, gt=0, doc="Peak learning rate.")
        augment: float = field(0.0, ge=0, lt=1, doc="Also learn the teacher's outputs on a "
                                                    "perturbed copy of each batch (BERT: "
                                                    "each word piece masked with this "
                                                    "probability); the copy has no label "
                                                    "loss. Doubles the step cost. 0 = off.")

        def check(self):
            if self.student_layers is None and not self.student:
                yield ("student_layers", "give student_layers (from the teacher) or student "
                                         "(fields of a fresh model)")
            if self.student_layers is not None and self.student:
                yield ("student", "use either student_layers or student, not both")
            if self.augment and self.alpha == 1:
                yield ("augment", "the augmented copies learn only the teacher's KL, which "
                                  "alpha: 1 switches off")

    def preflight(self, model, context):
        cfg = self.config
        what = (f"student from teacher layers {cfg.student_layers}" if cfg.student_layers
                else f"fresh student {cfg.student}")
        return [("(teacher)", f"{cfg.teacher}: frozen"), ("(student)", what)]

    def teacher(self, model, context):
        if self.config.teacher == "previous" and not context.previous_stages:
            raise StageError("distill: teacher 'previous' needs an earlier stage that trains "
                             "the teacher (e.g. train); or set teacher to a saved model")
        return load_teacher(self.config.teacher, model, context, "distill")

    def student(self, teacher, context):
        cfg = self.config
        plugin = context.plugin
        with context.strategy.scope():
            if cfg.student_layers is not None:
                if not hasattr(plugin, "student_from"):
                    raise StageError(f"distill: student_layers needs a layered model; "
                                     f"{plugin.config.type} has none (use student)")
                return plugin.student_from(teacher, cfg.student_layers)
            fields = {**dataclasses.asdict(plugin.config), **cfg.student}
            from tfdeploy.recipe.validate import validate
            student_cfg = validate(type(plugin.config), fields, {})
            return models.create(student_cfg, plugin.num_labels).build()

    def run(self, model, context):
        cfg = self.config
        teacher = self.teacher(model, context)
        student = self.student(teacher, context)
        print(f"  teacher {teacher.count_params():,} parameters -> student "
              f"{student.count_params():,}", flush=True)

        hidden = None
        if cfg.hidden_weight:
            if not hasattr(context.plugin, "hidden_states"):
                raise StageError(f"distill: hidden_weight needs a model with hidden "
                                 f"states; {context.plugin.config.type} has none")
            with context.strategy.scope():
                hidden = HiddenStates(context.plugin, student, teacher, cfg.hidden_weight)
        augment = None
        if cfg.augment:
            if not hasattr(context.plugin, "augment"):
                raise StageError(f"distill: augment needs a model that can perturb its "
                                 f"inputs; {context.plugin.config.type} cannot")
            augment = functools.partial(context.plugin.augment, rate=cfg.augment)
        history = fit_distilled(student, teacher, context, cfg, hidden=hidden, augment=augment)
        kl_first, kl_last = kl_first_last(history)
        self.report = {"teacher_params": int(teacher.count_params()),
                       "student_params": int(student.count_params()),
                       "kl_first": kl_first, "kl_last": kl_last}
        if hidden is not None:
            self.report["hidden_pairs"] = hidden.pairs
            self.report["hidden_mse"] = [history["hidden_mse"][0],
                                         history["hidden_mse"][-1]]
        return student
