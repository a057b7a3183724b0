"""Shared fitting machinery for every stage that trains (train, prune, cluster, qat, distill).

``FitConfig`` holds the knobs; ``fit`` compiles inside the strategy scope, converts epochs to
steps with the *global* batch, evaluates on the selection split (held out of the training
rows; the reported validation split never chooses), keeps the best weights and
backs up each evaluation period so a killed run (or a restarted worker) resumes.
"""
import dataclasses
import json
import math
import os
from typing import Literal

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy import progress
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import field


@dataclasses.dataclass(kw_only=True)
class FitConfig:
    epochs: float = field(1.0, gt=0, doc="Passes over the training split (fractions allowed).",
                          unit="epochs")
    steps: int = field(0, ge=0, le=10**9, doc="Optimizer steps; overrides epochs when > 0.",
                       unit="steps")
    batch_size: int = field(32, ge=1, le=65536, doc="Batch size per replica; the global batch is this "
                                          "times the number of replicas.", unit="examples")
    optimizer: Literal["adamw", "adam", "sgd"] = field("adamw", doc="Optimizer.")
    learning_rate: float = field(5e-5, gt=0, doc="Peak learning rate.")
    weight_decay: float = field(0.01, ge=0, le=10, doc="Decoupled weight decay (adamw); biases and "
                                                "LayerNorm are excluded.")
    warmup: float = field(0.1, ge=0, lt=1, doc="Fraction of steps with linear warm-up.")
    lr_schedule: Literal["linear", "constant", "cosine"] = field(
        "linear", doc="Learning-rate decay after warm-up.")
    clipnorm: float = field(1.0, ge=0, le=1e6, doc="Clip the global gradient norm (0 = off).")
    evals: int = field(0, ge=0, le=10000, doc="Evaluations on the selection split during the stage; "
                                    "0 = once per epoch (at least one).")
    early_stopping: int = field(0, ge=0, le=10000, doc="Stop after this many evaluations without "
                                             "improvement (0 = off).")
    keep_best: bool = field(True, doc="Return the weights of the best accuracy on the "
                                      "selection split (data.selection_split).")
    refit: bool = field(False, doc="Once the selection split has chosen the best evaluation, "
                        "train again from the stage's starting weights on the training and "
                        "selection rows together, for the steps that evaluation had (same "
                        "schedule): the stage's model then lost no rows to the choice. Costs "
                        "a second fit.")

    def total_steps(self, examples, global_batch):
        if self.steps:
            return self.steps
        return max(1, math.ceil(self.epochs * examples / global_batch))

    def eval_periods(self, total, steps_per_epoch):
        periods = self.evals or max(1, round(total / steps_per_epoch))
        periods = min(periods, total)
        return periods, math.ceil(total / periods)

    def seen(self, traits):
        """``traits`` after this fit: a refit trains on the selection rows too, so they no
        longer measure the model fairly."""
        return dataclasses.replace(traits, selection_seen=True) if self.refit else traits


@keras.utils.register_keras_serializable(package="tfdeploy")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then linear/cosine decay to 0 (or constant)."""

    def __init__(self, peak, total_steps, warmup_steps, decay="linear"):
        self.peak, self.total_steps = float(peak), int(total_steps)
        self.warmup_steps, self.decay = int(warmup_steps), decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(max(self.warmup_steps, 1), tf.float32)
        span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.decay == "linear":
            after = self.peak * (1.0 - progress)
        elif self.decay == "cosine":
            after = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            after = tf.constant(self.peak)
        if self.warmup_steps == 0:
            return after
        return tf.where(step < self.warmup_steps, self.peak * (step + 1) / warm, after)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "decay": self.decay}


def make_optimizer(cfg: FitConfig, total_steps):
    lr = WarmupDecay(cfg.learning_rate, total_steps, int(cfg.warmup * total_steps),
                     cfg.lr_schedule)
    clip = {"global_clipnorm": cfg.clipnorm} if cfg.clipnorm else {}
    if cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, epsilon=1e-6, **clip)
        opt.exclude_from_weight_decay(var_names=["bias", "layernorm", "LayerNorm"])
        return opt
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, epsilon=1e-6, **clip)
    return keras.optimizers.SGD(lr, momentum=0.9, **clip)


class KeepBest(keras.callbacks.Callback):
    """Remember the weights with the best ``monitor`` value and restore them at the end.
    With a ``store`` folder (the stage's backup) they survive a kill: a resumed stage still
    chooses among all its evaluations, not only those after the restart."""

    def __init__(self, monitor="val_accuracy", store=None, write=True, resuming=False,
                 higher_is_better=True):
        super().__init__()
        self.monitor, self.weights, self.best_epoch = monitor, None, None
        self.sign = 1.0 if higher_is_better else -1.0  # best is stored as sign * value
        self.best = -np.inf
        self.store, self.write, self.resuming = store, write, resuming

    def on_train_begin(self, logs=None):
        meta = os.path.join(self.store or "", "best.json")
        # only what belongs to the backup being resumed (a fresh start ignores old files)
        if self.store and self.resuming and os.path.exists(meta):
            with open(meta) as f:
                saved = json.load(f)
            with np.load(os.path.join(self.store, "best.npz"), allow_pickle=False) as f:
                self.weights = [f[f"w{i}"] for i in range(len(f.files))]
            self.best, self.best_epoch = saved["best"], saved["best_epoch"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch
            self.weights = self.model.get_weights()
            if self.store and self.write:
                self.save()

    def save(self):
        from tfdeploy.rundir import atomic_write_json

        os.makedirs(self.store, exist_ok=True)
        tmp = os.path.join(self.store, ".tmp-best.npz")
        np.savez(tmp, **{f"w{i}": w for i, w in enumerate(self.weights)})
        os.replace(tmp, os.path.join(self.store, "best.npz"))
        atomic_write_json(os.path.join(self.store, "best.json"),
                          {"best": float(self.best), "best_epoch": self.best_epoch})

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


class PeriodLog(keras.callbacks.Callback):
    """Every evaluation period's logs, kept in ``store`` (the stage's backup) so the
    history of a resumed stage has the periods from before the kill too."""

    def __init__(self, store, write=True, resuming=False):
        super().__init__()
        self.path, self.write, self.periods = os.path.join(store, "periods.json"), write, []
        self.resuming = resuming

    def on_train_begin(self, logs=None):
        if self.resuming and os.path.exists(self.path):
            with open(self.path) as f:
                self.periods = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        self.periods = [p for p in self.periods if p["epoch"] < epoch]
        self.periods.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        if self.write:
            from tfdeploy.rundir import atomic_write_json

            atomic_write_json(self.path, self.periods)

    def history(self):
        keys = [k for k in self.periods[0] if k != "epoch"] if self.periods else []
        return {k: [p.get(k) for p in self.periods] for k in keys}


def compile_for_task(model, optimizer, context):
    """The task objective's loss and metric (class accuracy, RMSE, AUC)."""
    objective = context.task.objective
    with context.strategy.scope():
        model.compile(optimizer=optimizer, loss=objective.loss(),
                      metrics=objective.keras_metrics())


def step_plan(context, cfg: FitConfig):
    """(optimizer steps the fit will run, evaluation periods, steps per period)."""
    global_batch = context.global_batch(cfg.batch_size)
    total = cfg.total_steps(len(context.train), global_batch)
    periods, per_period = cfg.eval_periods(total, context.steps_per_epoch(cfg.batch_size))
    return periods * per_period, periods, per_period


def fit(model, context, cfg: FitConfig, callbacks=(), compile_fn=None):
    """Train ``model`` per ``cfg``; returns the history dict (also written to history.json).
    With ``refit``, the model is then trained again on all training rows (see ``refit``)."""
    if cfg.early_stopping and context.selection is None:
        raise StageError("early_stopping needs a selection split (data.selection_split > 0): "
                         "the reported validation split never chooses")
    if cfg.refit and (context.selection is None or not cfg.keep_best):
        raise StageError("refit needs a selection split (data.selection_split > 0) and "
                         "keep_best: it repeats the training the selection split chose")
    start = model.get_weights() if cfg.refit else None
    chosen = os.path.join(context.backup_path(), "chosen.json")
    if cfg.refit and os.path.exists(chosen):  # killed during the refit: the choice stands
        with open(chosen) as f:
            record = json.load(f)
        print(f"  the selection split chose evaluation {record['best_epoch'] + 1} before the "
              f"restart", flush=True)
    else:
        record = fit_and_choose(model, context, cfg, callbacks, compile_fn)
    if cfg.refit:
        if context.is_chief:
            from tfdeploy.rundir import atomic_write_json

            os.makedirs(os.path.dirname(chosen), exist_ok=True)
            atomic_write_json(chosen, record)
        best = record["best_epoch"]
        periods = len(record.get("loss", [])) if best is None else best + 1
        record["refit"] = refit(model, context, cfg, start, max(1, periods), callbacks,
                                compile_fn)
    if context.is_chief:
        from tfdeploy.rundir import atomic_write_text

        atomic_write_text(context.path("history.json"), json.dumps(record, indent=2))
    return record


def refit(model, context, cfg, start_weights, periods, callbacks, compile_fn):
    """Train from ``start_weights`` on the training and selection rows together, for the
    first ``periods`` evaluation periods of the same schedule sized for all those rows (so
    the model is the chosen checkpoint's counterpart, with no rows held out)."""
    rows = context.all_training_rows()
    whole = dataclasses.replace(context, train=rows, selection=None)
    total, all_periods, per_period = step_plan(whole, cfg)
    steps = periods * per_period
    model.set_weights(start_weights)
    (compile_fn or compile_for_task)(model, make_optimizer(cfg, total), whole)
    extra = list(callbacks)
    if not isinstance(context.strategy, tf.distribute.OneDeviceStrategy):
        extra.append(keras.callbacks.BackupAndRestore(
            os.path.join(context.backup_path(), "refit")))
    progress.say(f"  refit on all {len(rows)} training rows: {steps} of {total} steps "
                 f"(the chosen {periods} of {all_periods} evaluation periods)")
    shown = progress.keras_callback(f"stage {context.stage_name} refit", steps, per_period,
                                    per_step=context.per_step_callbacks)
    try:
        model.fit(whole.train_dataset(cfg.batch_size), epochs=periods,
                  steps_per_epoch=per_period, callbacks=extra + [shown], verbose=0)
    finally:
        shown.tail.stop()
    return {"rows": len(rows), "steps": steps, "of_steps": total}


def fit_and_choose(model, context, cfg, callbacks, compile_fn):
    """The fit itself, evaluated on the selection split each period; the best weights
    stay in ``model`` (keep_best)."""
    global_batch = context.global_batch(cfg.batch_size)
    total, periods, per_period = step_plan(context, cfg)
    optimizer = make_optimizer(cfg, periods * per_period)
    (compile_fn or compile_for_task)(model, optimizer, context)
    objective = context.task.objective
    extra = list(callbacks)
    selection = context.selection  # the split; fit gets its batches below
    # Backups make a killed stage resume at its last evaluation, not from scratch.
    backup, found = None, None
    if not isinstance(context.strategy, tf.distribute.OneDeviceStrategy):  # unsupported there
        backup = context.backup_path()
        found = tf.train.latest_checkpoint(os.path.join(backup, "chief"))
        if found:
            print(f"  resuming from backup {found}", flush=True)
        extra.append(keras.callbacks.BackupAndRestore(backup))
    monitor = "val_" + objective.name
    keep = KeepBest(monitor, backup, context.is_chief, found is not None,
                    objective.higher_is_better) \
        if cfg.keep_best and selection is not None else None
    if cfg.early_stopping:
        extra.append(keras.callbacks.EarlyStopping(monitor, patience=cfg.early_stopping,
                                                   mode=objective.mode))
    if keep:
        extra.append(keep)
    period_log = PeriodLog(backup, context.is_chief, found is not None) if backup else None
    if period_log:
        extra.append(period_log)
    if context.recipe.output.tensorboard:
        extra.append(keras.callbacks.TensorBoard(
            context.path("tensorboard"),
            update_freq=max(1, per_period // 10) if context.per_step_callbacks else "epoch"))
    progress.say(f"  {total} steps at global batch {global_batch} ({context.replicas} "
                 f"replica(s)), {periods} evaluation(s)")
    shown = progress.keras_callback(f"stage {context.stage_name}", periods * per_period,
                                    per_period, per_step=context.per_step_callbacks)
    extra.append(shown)
    try:
        history = model.fit(context.train_dataset(cfg.batch_size), epochs=periods,
                            steps_per_epoch=per_period, callbacks=extra, verbose=0,
                            **context.validation_args())
    finally:
        shown.tail.stop()
    record = period_log.history() if period_log and period_log.periods else {
        k: [float(v) for v in vals] for k, vals in history.history.items()}
    record.update(steps=periods * per_period, global_batch=global_batch,
                  best_epoch=None if keep is None else keep.best_epoch)
    return record
