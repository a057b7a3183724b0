"""Distillation machinery shared by the stages that learn from a teacher (distill, prune
and qat with ``alpha`` < 1).

loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher/T) ||
softmax(student/T)), optionally plus a hidden-state MSE and the KL on an augmented copy of
each batch. The teacher never trains; its logits are computed on the fly inside the same
strategy scope, so every replica sees the same frozen teacher.
"""
import tensorflow as tf
import tf_keras as keras

from tfdeploy.objectives import CLASSIFICATION
from tfdeploy.training import fit


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
                 augment=None, gradient_hook=None, objective=CLASSIFICATION):
        super().__init__()
        self.objective = objective  # the task's losses (not a layer: plain attribute)
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
        """The task's hard loss and the loss to the teacher (KL at temperature T for
        classes, squared error for a rating), per example."""
        objective = self.objective
        return (objective.per_example(y, student_logits),
                objective.soft(student_logits, teacher_logits, self.temperature))

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
    objective = context.task.objective
    with context.strategy.scope():
        distiller.compile(optimizer=optimizer, loss=objective.loss(),
                          metrics=objective.keras_metrics())


def fit_distilled(student, teacher, context, cfg, callbacks=(), hidden=None, augment=None,
                  gradient_hook=None):
    """Fit ``student`` on cfg.alpha * CE + (1 - cfg.alpha) * T^2 * KL to the frozen
    ``teacher`` (+ ``hidden``'s loss; + the KL on ``augment``ed copies of each batch); the
    distill stage, and qat and prune to stay close to the model entering the stage.
    ``gradient_hook(variables, grads)`` sees every step's gradients. Returns fit's history."""
    with context.strategy.scope():
        distiller = Distiller(student, teacher, cfg.alpha, cfg.temperature,
                              context.global_batch(cfg.batch_size), hidden, augment,
                              gradient_hook, context.task.objective)
        _, sample = next(context.validation.numpy_batches(2))
        distiller(sample)  # built before fit, so BackupAndRestore can checkpoint it
    return fit(distiller, context, cfg, callbacks, compile_fn=compile_distiller)


def fit_maybe_distilled(model, entering, context, cfg, stage, callbacks=(),
                        gradient_hook=None):
    """Fit ``model`` as a stage with :class:`~tfdeploy.stages.teacher.Distillation` fields
    says: on labels alone (alpha 1), or also on a KL to its teacher (by default
    ``entering``, the model entering the stage). Returns what the report adds."""
    if cfg.alpha == 1:
        fit(model, context, cfg, callbacks)
        return {}
    from tfdeploy.stages.teacher import load_teacher

    teacher = load_teacher(cfg.teacher, entering, context, stage)
    history = fit_distilled(model, teacher, context, cfg, callbacks,
                            gradient_hook=gradient_hook)
    return {"kl_to_teacher": kl_first_last(history)}


def kl_first_last(history):
    return [history["kl"][0], history["kl"][-1]]
