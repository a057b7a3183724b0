"""Progress a person can follow, on a terminal and in a log.

On a terminal every long step shows a live tqdm bar (rate, ETA). When the output is not a
terminal (a log file, CI, ``nohup``, a notebook) a plain line is printed every
``--progress_every`` seconds instead — step/total, rate and ETA, with the run's elapsed
time in front — so a log shows where a run is. Steps without a count (a converter call)
print a heartbeat with the elapsed time. ``--progress_every=0`` is the quiet mode: no
progress output at all (the one-line summaries stay).
"""
import contextlib
import sys
import threading
import time

SETTINGS = {"every": 30.0, "mode": "auto", "started": time.time()}


def configure(every=30.0, mode="auto"):
    """``mode``: auto (bar on a terminal, lines otherwise), bar, lines."""
    SETTINGS.update(every=float(every), mode=mode, started=time.time())


def quiet():
    return SETTINGS["every"] <= 0


def use_bar():
    return SETTINGS["mode"] == "bar" or (SETTINGS["mode"] == "auto" and sys.stdout.isatty())


def clock(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def stamp():
    return f"[{clock(time.time() - SETTINGS['started'])}]"


def say(text):
    """One line, always (not progress): what a step is about to do or did."""
    print(f"{stamp()} {text}", flush=True)


class Progress:
    """Counted progress of one step: ``update(n)`` as work is done. Not on a terminal, a
    ticker thread prints the line every ``--progress_every`` seconds, so a step whose
    first unit is slow (a traced first batch) still shows that it is alive."""

    def __init__(self, what, total, unit="step"):
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.done, self.initial, self.started = 0, 0, time.time()
        self._bar, self._stop = None, None
        if quiet():
            return
        if use_bar():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, unit=unit, leave=False,
                             dynamic_ncols=True, file=sys.stdout)
        else:
            self._stop = threading.Event()
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self):
        while not self._stop.wait(SETTINGS["every"]):
            print(self.line(), flush=True)

    def skip_to(self, done):
        """Work done before this process (a resumed stage): not part of the rate."""
        self.done = self.initial = done
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()

    def rate(self):
        elapsed = time.time() - self.started
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self):
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self):
        rate, eta = self.rate(), self.eta()
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        return (f"{stamp()} {self.what}: {self.unit} {self.done}/{self.total}{share}, "
                f"{rate:.3g} {self.unit}s/s, ETA {clock(eta) if eta is not None else '?'}")

    def update(self, n=1):
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        if self._stop is not None:
            self._stop.set()


@contextlib.contextmanager
def counted(what, total, unit="step"):
    bar = Progress(what, total, unit)
    try:
        yield bar
    finally:
        bar.close()


class Beat:
    """Every ``--progress_every`` seconds from ``start()`` to ``stop()``, a line saying
    ``what`` is still working and for how long."""

    def __init__(self, what):
        self.what, self._stop, self._thread = what, threading.Event(), None

    def start(self):
        if quiet() or self._thread is not None:
            return
        started = time.time()

        def beat():
            while not self._stop.wait(SETTINGS["every"]):
                print(f"{stamp()} {self.what}: still working, "
                      f"{clock(time.time() - started)} so far", flush=True)

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


@contextlib.contextmanager
def heartbeat(what):
    """A step without a count: every ``--progress_every`` seconds a line with the time it
    has taken so far (on a terminal too: a converter shows nothing else)."""
    beat = Beat(what)
    beat.start()
    try:
        yield
    finally:
        beat.stop()


def keras_callback(what, total, per_period, estimate_after=5, per_step=True):
    """A Keras callback reporting training steps and each evaluation period's metrics;
    after ``estimate_after`` timed steps (the first compiles) it says how long the stage
    should take at the measured rate. ``per_step=False``: counted per period only (a
    parameter_server coordinator refuses batch-level callbacks)."""
    import tf_keras as keras

    class PeriodProgress(keras.callbacks.Callback):
        # After the last period Keras still runs the callbacks' ends (backup cleanup,
        # restoring the best weights) and tears the input pipeline down: measured at up
        # to 20 s under load, silent. ``tail`` beats from there until ``fit`` returns.
        tail = Beat(f"{what}: finishing")

        def on_train_begin(self, logs=None):
            self.bar = Progress(what, total)
            self.timed_from, self.estimated, self.first_epoch = None, False, True

        def on_epoch_begin(self, epoch, logs=None):
            if self.first_epoch and epoch:  # resumed from a backup
                self.bar.skip_to(epoch * per_period)
            self.first_epoch = False

        def on_epoch_end(self, epoch, logs=None):
            if not per_step:
                self.bar.update(min(total, (epoch + 1) * per_period) - self.bar.done)
            shown = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items())
                              if getattr(v, "shape", ()) == ())
            say(f"{what}: period {epoch + 1}/{-(-total // per_period)}, step "
                f"{self.bar.done}/{total}: {shown}")
            if epoch + 1 >= -(-total // per_period):
                self.tail.start()

        def on_train_end(self, logs=None):
            self.bar.close()

    class StepProgress(PeriodProgress):
        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if self.timed_from is None:
                self.timed_from = (time.time(), self.bar.done)  # after the compiling step
            elif not self.estimated and self.bar.done - self.timed_from[1] >= estimate_after:
                self.estimated = True
                rate = (self.bar.done - self.timed_from[1]) / (time.time() - self.timed_from[0])
                say(f"{what}: {total} steps at {rate:.3g} steps/s measured: about "
                    f"{clock((total - self.bar.done) / rate)} to go")

    return StepProgress() if per_step else PeriodProgress()


def predict_callback(what, total):
    """A Keras callback counting ``model.predict`` batches."""
    import tf_keras as keras

    class PredictProgress(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            self.bar = Progress(what, total, unit="batch")

        def on_predict_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_predict_end(self, logs=None):
            self.bar.close()

    return PredictProgress()


def counted_generator(what, factory, total):
    """A generator factory whose samples are counted (calibration)."""
    def gen():
        with counted(what, total, unit="sample") as bar:
            for item in factory():
                yield item
                bar.update(1)
    return gen
