"""Task metrics and parity between a model and its exported artifacts."""
import time

import numpy as np

from tfdeploy import objectives, progress
from tfdeploy.traits import Traits


def parity(logits, reference, objective=objectives.CLASSIFICATION):
    """Max abs output difference against the Keras model, and for classes the agreement
    of predicted labels."""
    out = {"max_abs_diff": float(np.max(np.abs(logits.astype(np.float64) - reference)))}
    if objective.agreement:
        out["agreement"] = float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))
    return out


def record(stage, artifact, runtime, logits, labels, seconds, reference=None,
           objective=objectives.CLASSIFICATION, **extra):
    """One metrics.json record (schema documented in README: 'metrics.json')."""
    out = {"stage": stage, "artifact": artifact, "runtime": runtime, "split": "validation",
           "examples": int(len(labels)), "metric": objective.name,
           "metrics": objective.scores(logits, labels),
           "eval_seconds": round(seconds, 3), "finite": bool(np.isfinite(logits).all())}
    if reference is not None:
        out.update(parity(logits, reference, objective))
    out.update(extra)
    return out


def evaluate_keras(model, context, stage, traits=Traits()):
    """The reported record (validation split), with the selection split's accuracy beside
    it: the number checkpoints were chosen by (``traits``: the model's, which say whether a
    refit trained on those rows)."""
    start = time.perf_counter()
    logits = context.predict(model)
    objective = context.task.objective
    rec = record(stage, "keras", "tf-keras", logits, context.validation.labels,
                 time.perf_counter() - start, objective=objective,
                 params=int(model.count_params()))
    if context.selection is not None:
        chosen_on = context.predict(model, context.selection)
        rec["selection"] = {"examples": len(context.selection),
                            "metrics": objective.scores(chosen_on, context.selection.labels),
                            "trained_on": traits.selection_seen}
    return rec, logits


def evaluate_artifact(artifact, context, stage, reference, threads=2):
    """Run ``artifact`` in its own runtime on the validation split; compare with Keras."""
    from tfdeploy.bench import gzip_size

    split = context.validation
    logits = None
    size = context.recipe.evaluate.batch_size
    with progress.counted(f"evaluate {artifact.name}", -(-len(split) // size),
                          unit="batch") as bar:
        run = artifact.runner(threads)  # loading counts as part of the step: it shows
        start = time.perf_counter()
        for idx, features in split.numpy_batches(size):
            out = run(features)
            if logits is None:
                logits = np.zeros((len(split), out.shape[-1]), np.float32)
            logits[idx] = out
            bar.update(1)
        seconds = time.perf_counter() - start
        gzipped = gzip_size(artifact.path)  # seconds for a big file: still under the ticker
    return record(stage, artifact.name, artifact.runtime, logits, split.labels, seconds,
                  reference, context.task.objective, path=artifact.path, size_bytes=artifact.size(),
                  gzip_bytes=gzipped, float=artifact.is_float)


def check_gate(rec, baseline, max_drop, relative=False):
    """A message if ``rec``'s metric got worse than ``baseline`` by more than allowed, or
    if the artifact's outputs were not all finite."""
    if rec.get("finite") is False:
        return (f"{rec['artifact']} ({rec['runtime']}) of stage {rec['stage']!r}: outputs "
                f"NaN or inf")
    if max_drop is None or baseline is None:
        return None
    objective = objectives.of(rec)
    drop = objectives.drop(rec, baseline)
    limit = max_drop * abs(baseline) if relative else max_drop
    if drop > limit:
        worse = "below" if objective.higher_is_better else "above"
        return (f"{rec['artifact']} ({rec['runtime']}) of stage {rec['stage']!r}: "
                f"{objective.name} {objectives.value(rec):.4f} is {drop:.4f} {worse} the "
                f"baseline {baseline:.4f}; evaluate.max_drop allows {limit:.4f}"
                f"{' (relative)' if relative else ''}")
    return None


def check_float_parity(rec, tolerance=1e-4):
    """Problems (text) if a float artifact disagrees with its Keras model (NaN or inf
    logits on either side are a disagreement)."""
    diff = rec.get("max_abs_diff", 0.0)
    if rec.get("agreement", 1.0) < 1.0 or not np.isfinite(diff) or diff > tolerance:
        agreement = f"agreement {rec['agreement']:.4f}, " if "agreement" in rec else ""
        return (f"{rec['artifact']} ({rec['runtime']}) disagrees with the Keras model of stage "
                f"{rec['stage']!r}: {agreement}max abs diff "
                f"{rec['max_abs_diff']:.2e} (limit {tolerance:.0e})")
    return None
