"""Progress a person can follow in a log: with the output piped, a line at least every
--progress_every seconds through training and export, training lines with step/total and
an ETA, a time estimate at the start of the stage; --progress_every=0 is quiet."""
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT

EVERY = 1.0


def tiny_recipe(tmp_path):
    recipe = tmp_path / "prog.yaml"
    recipe.write_text(f"""base: {os.path.join(ROOT, 'recipes', 'tiny.yaml')}
name: prog
model: {{layers: [0]}}
data: {{max_train_examples: 800}}
stages: [{{type: train, steps: 60, batch_size: 16, evals: 2}}]
export: {{formats: [savedmodel, tflite_int8], dir: {tmp_path / 'saved_models'},
         calibration_examples: 40}}
output: {{tensorboard: false}}
""")
    return recipe


def timed_lines(*args):
    """(seconds since start, line) for every line the CLI prints, as it prints it."""
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy.run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    started, lines = time.time(), []
    for line in proc.stdout:
        lines.append((time.time() - started, line.rstrip("\n")))
    assert proc.wait(600) == 0, "\n".join(l for _, l in lines)[-3000:]
    return lines


def test_piped_output_shows_progress_with_eta(tmp_path, sst2_dir):
    lines = timed_lines(str(tiny_recipe(tmp_path)), f"--output_dir={tmp_path / 'runs'}",
                        f"--progress_every={EVERY}")
    text = "\n".join(l for _, l in lines)
    start = next(t for t, l in lines if "stage train (train): running" in l)
    end = next(t for t, l in lines if l.startswith("report:"))
    during = [t for t, _ in lines if start <= t <= end]
    gaps = [b - a for a, b in zip(during, during[1:])]
    worst = gaps.index(max(gaps))
    around = [l for t, l in lines if during[max(0, worst - 3)] <= t <= during[worst + 1]]
    assert max(gaps) <= EVERY + 1.5, (max(gaps), around)  # never silent for long
    training = [l for _, l in lines if re.search(r"stage train: step \d+/60 .*ETA", l)]
    assert len(training) >= 2, text[-3000:]
    assert re.search(r"stage train: 60 steps at [\d.]+ steps/s measured: about", text)
    assert re.search(r"calibrate: sample \d+/40", text) or "export tflite_int8: still" in text
    assert re.search(r"evaluate tflite_int8: batch \d+/\d+", text) or \
        "export tflite_int8: writing" in text
    assert all(re.match(r"\[\d+:\d\d\] ", l) for l in training)


def test_quiet_mode_prints_no_progress(tmp_path, sst2_dir):
    lines = timed_lines(str(tiny_recipe(tmp_path)), f"--output_dir={tmp_path / 'runs'}",
                        "--progress_every=0", "--set=export.formats=[savedmodel]")
    text = "\n".join(l for _, l in lines)
    assert "ETA" not in text and "still working" not in text
    assert "stage train: validation accuracy" in text


def test_benchmark_every_stage(tmp_path, sst2_dir):
    """benchmark.stages: all — every stage's artifacts are exported, evaluated and timed
    (in artifacts/<stage>/ for earlier stages) and the report has a row per stage; only
    the last stage's SavedModel is published."""
    import json

    timed_lines(str(tiny_recipe(tmp_path)), f"--output_dir={tmp_path / 'runs'}",
                        "--progress_every=0",
                        "--set=stages=[{type: train, steps: 20, batch_size: 16}, "
                        "{type: prune, name: pruned, steps: 20, batch_size: 16, "
                        "final_sparsity: 0.5, frequency: 5}]",
                        "--set=export.formats=[savedmodel, tflite_dynamic_int8]",
                        "--set=benchmark.enabled=true", "--set=benchmark.stages=all",
                        "--set=benchmark.batch_sizes=[1]", "--set=benchmark.runs=5",
                        "--set=benchmark.seconds=0.2", "--set=benchmark.settle=0.05",
                        "--set=benchmark.warmup_seconds=0.05",
                        "--set=benchmark.lengths=validation")
    (run_dir,) = (tmp_path / "runs" / "prog").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    timed = {(r["stage"], r["artifact"]) for r in records if r.get("latency")}
    assert timed == {(s, a) for s in ("train", "pruned")
                     for a in ("savedmodel", "tflite_dynamic_int8")}, timed
    # the validation split's padded lengths
    shares = next(r for r in records if r.get("latency"))["latency_settings"]["length_shares"]
    assert set(shares) <= {"16", "32", "64"} and sum(shares.values()) == pytest.approx(1.0)
    for rec in (r for r in records if r.get("latency")):  # the mix of the lengths timed
        by_length = {n: rec["latency_by_length"][n]["batch_1"]["median_ms"] for n in shares}
        assert rec["latency"]["batch_1"]["median_ms"] == pytest.approx(
            sum(shares[n] * by_length[n] for n in shares))
    assert (run_dir / "artifacts" / "train" / "prog.tflite_dynamic_int8.tflite").exists()
    report = (run_dir / "report.md").read_text()
    assert "each padded length of the validation split timed" in report
    assert "| train | tflite_dynamic_int8 |" in report and "| pruned | tflite_dynamic_int8 |" \
        in report
    manifest = json.loads((tmp_path / "saved_models" / "prog" / "1" / "assets.extra" /
                           "tfdeploy" / "serving.json").read_text())
    assert set(manifest["artifacts"]) == {"savedmodel", "tflite_dynamic_int8"}
