"""Accuracy-aware mixed precision: which layers of a quantized artifact must stay at a higher
precision for it to pass the accuracy gate.

Every decision is taken on the selection split (carved from the training rows); the
validation split the report shows chooses nothing.

1. Sensitivity: each layer the format quantizes is quantized alone (every other layer float)
   and run in the artifact's own runtime on a seeded sample of the selection split
   (``evaluate.search_examples`` rows); its score is the mean squared difference of the
   outputs from the all-float file's.
2. Greedy: the most sensitive layer not yet tried moves one step up the format's precision
   ladder (int4 -> int8, int8 -> float) and the mix is measured on the whole selection
   split; the step is kept unless it got worse there (classes: fewer rows predicted as the
   all-float file predicts them; else the task metric). This goes on until the gate holds
   there -- for classes also at most ``max_drop`` of the rows predicted differently from
   the float file --, ``evaluate.search_max_layers`` layers are kept, every layer was
   tried, or ``evaluate.search_seconds`` have passed.

Deterministic for a seed: the sample is seeded, the quantizers are deterministic, and ties
in sensitivity keep the model's layer order.
"""
import dataclasses
import os
import shutil
import time

import numpy as np

from tfdeploy import evaluate, export, objectives, progress
from tfdeploy.data.pipeline import encode_split


@dataclasses.dataclass
class Step:
    kept: dict          # {layer: precision} held above the format's own precision
    metric: float       # on the selection split
    size_bytes: int
    passed: bool
    agreement: float = None  # share of selection rows predicted as the all-float file does
    accepted: bool = True    # False: it made the metric worse, so it was undone


@dataclasses.dataclass
class Outcome:
    fmt: str
    precision: str      # the format's own precision
    sensitivity: list   # [(layer, op, error)] most sensitive first
    steps: list         # [Step]: the curve, step 0 = nothing kept
    seconds: float
    evaluations: int
    stopped: str        # why the search ended

    @property
    def chosen(self):
        return [s for s in self.steps if s.accepted][-1]

    @property
    def kept(self):
        return self.chosen.kept

    def summary(self, objective):
        chosen = self.chosen
        return {
            "precision": self.precision,
            "kept": dict(chosen.kept),
            "passed_on_selection": chosen.passed,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 1), "evaluations": self.evaluations,
            "selection_metric": objective.name,
            "curve": [{"kept": len(s.kept), "added": _added(s), "precision":
                       s.kept.get(_added(s)), objective.name: round(s.metric, 6),
                       "agreement": s.agreement, "size_bytes": s.size_bytes,
                       "accepted": s.accepted}
                      for s in self.steps],
            "sensitivity": [{"layer": layer, "op": op, "output_mse": float(f"{err:.4g}")}
                            for layer, op, err in self.sensitivity],
        }

    def describe(self, objective):
        """What was tried, in words, for a gate failure message."""
        chosen = self.chosen
        curve = " -> ".join(f"{s.metric:.4f}" + ("" if s.accepted else " (undone)")
                            for s in self.steps)
        kept = ", ".join(f"{layer} at {p}" for layer, p in chosen.kept.items()) or "none"
        return (f"the search tried {len(self.steps) - 1} layer(s) above {self.precision} and "
                f"kept {len(chosen.kept)} ({kept}); selection {objective.name} {curve}; "
                f"stopped: {self.stopped}")


def worse(objective, trial, best):
    """Whether ``trial`` is worse than ``best``: for classes, fewer rows predicted as the
    float file predicts them (what a search step must win back); else a worse metric."""
    if trial.agreement is not None:
        return trial.agreement < best.agreement
    return objective.better(best.metric, trial.metric)


def _added(step):
    """The layer a step added: the last one in its (insertion-ordered) kept dict."""
    return list(step.kept)[-1] if step.kept else None


class Search:
    """One format's search inside an export job (``job``) of the run's ``context``."""

    def __init__(self, fmt, job, context, baseline):
        self.fmt, self.job, self.context, self.baseline = fmt, job, context, baseline
        self.ev = context.recipe.evaluate
        self.objective = context.task.objective
        self.folder = os.path.join(job.folder, ".search", fmt.name)
        self.evaluations = 0
        self._float = None

    def run(self, path):
        """Search, then write the chosen mix to ``path``; the Outcome."""
        start = time.perf_counter()
        layers = self.fmt.layers(self.job)
        if not layers:
            raise ValueError(f"{self.fmt.name}: the model has no layer this format quantizes")
        sensitivity = self.sensitivity(layers, start)
        steps, stopped = self.climb(sensitivity, start)
        outcome = Outcome(self.fmt.name, self.fmt.precisions[0], sensitivity, steps,
                          time.perf_counter() - start, self.evaluations, stopped)
        self.fmt.write_mixed(self.job, path, outcome.kept)
        shutil.rmtree(self.folder, ignore_errors=True)
        return outcome

    def sensitivity(self, layers, start):
        sample = self.sample()
        everything_float = {layer: "float" for layer, _ in layers}
        reference = self.outputs(everything_float, sample)
        scores = []
        with progress.counted(f"search {self.fmt.name}: sensitivity", len(layers),
                              unit="layer") as bar:
            for i, (layer, op) in enumerate(layers):
                alone = {other: "float" for other, _ in layers if other != layer}
                err = float(np.mean((self.outputs(alone, sample) - reference) ** 2))
                scores.append((-err, i, layer, op, err))
                bar.update(1)
        return [(layer, op, err) for _, _, layer, op, err in sorted(scores)]

    def climb(self, sensitivity, start):
        """Steps up the ladder, most sensitive layer first. A step that makes things worse
        on the selection split (see :func:`worse`) is undone: the layer stays at the
        format's precision."""
        higher, objective = self.fmt.precisions[1], self.objective
        best = self.step({})
        steps, candidates = [best], [layer for layer, _, _ in sensitivity]
        while not best.passed:
            if len(best.kept) >= self.ev.search_max_layers:
                return steps, f"evaluate.search_max_layers={self.ev.search_max_layers} " \
                              f"layers kept"
            if not candidates:
                return steps, "every layer tried"
            if time.perf_counter() - start > self.ev.search_seconds:
                return steps, f"evaluate.search_seconds={self.ev.search_seconds:g} spent"
            trial = self.step(dict(best.kept, **{candidates.pop(0): higher}))
            trial.accepted = not worse(objective, trial, best)
            steps.append(trial)
            if trial.accepted:
                best = trial
        return steps, "the gate holds on the selection split"

    def step(self, kept):
        """Write and measure one mix on the selection split. It passes when the gate holds
        there and, for classes, when at most max_drop of the rows changed their predicted
        class against the all-float file: that bounds the accuracy drop on *any* mix of
        rows, so it holds up on a validation split whose rows are harder than the
        selection split's (SST-2: training phrases vs. dev sentences)."""
        selection = self.context.selection
        out = self.outputs(kept, selection)
        size = os.path.getsize(self.last_path)  # before the float file takes its place
        rec = {"artifact": self.fmt.name, "runtime": self.fmt.runtime, "stage": "search",
               "metric": self.objective.name,
               "metrics": self.objective.scores(out, selection.labels),
               "finite": bool(np.isfinite(out).all())}
        problem = evaluate.check_gate(rec, self.baseline, self.ev.max_drop, self.ev.relative)
        agreement = None
        if self.objective.agreement:
            agreement = evaluate.parity(out, self.float_outputs(), self.objective)["agreement"]
            limit = self.ev.max_drop * (abs(self.baseline) if self.ev.relative else 1)
            problem = problem or (1 - agreement > limit)
        metric = objectives.value(rec)
        flips = "" if agreement is None else f", agreement {agreement:.4f}"
        progress.say(f"search {self.fmt.name}: {len(kept)} layer(s) kept, selection "
                     f"{self.objective.name} {metric:.4f}{flips}, {size / 1e6:.1f} MB")
        return Step(kept, metric, size, not problem, agreement)

    def float_outputs(self):
        """The all-float file's outputs on the selection split (once)."""
        if self._float is None:
            everything = {layer: "float" for layer, _ in self.fmt.layers(self.job)}
            self._float = self.outputs(everything, self.context.selection)
        return self._float

    def sample(self):
        task, count = self.context.task, self.ev.search_examples
        picks = np.sort(np.random.default_rng([self.context.recipe.seed, 2]).permutation(
            len(task.selection))[:count])
        return encode_split(self.context.plugin, task.selection.subset(picks),
                            self.context.recipe.data)

    def outputs(self, kept, split):
        """The artifact written with ``kept``, run on ``split``: its outputs in split order."""
        self.last_path = os.path.join(self.folder, f"candidate{self.fmt.suffix}")
        self.fmt.write_mixed(self.job, self.last_path, kept)
        self.evaluations += 1
        run = export.runner_for(self.last_path, self.ev.threads)
        out = None
        for idx, features in split.numpy_batches(self.ev.batch_size):
            y = run(features)
            if out is None:
                out = np.zeros((len(split), y.shape[-1]), np.float32)
            out[idx] = y
        return out
