"""Progress a person can follow in a log: with the output piped, a line at least every
--progress_every seconds through training and export, training lines with step/total and
an ETA, a time estimate at the start of the stage; --progress_every=0 is quiet."""
import os
import re
import subprocess
import sys
import time

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
    assert max(gaps) <= EVERY + 1.5, (max(gaps), text[-3000:])  # never silent for long
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
