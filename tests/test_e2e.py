"""End to end through the CLI on recipes/tiny.yaml: train -> evaluate -> SavedModel, the run
directory's contents, kill-and-resume, and bad input (exit 2, no traceback, nothing written)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, run_cli

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


def test_tiny_recipe_end_to_end(tmp_path, sst2_dir):
    out, exports = tmp_path / "runs", tmp_path / "saved_models"
    proc = run_cli(TINY, f"--output_dir={out}", f"--set=export.dir={exports}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "tiny").iterdir()
    for name in ("recipe.yaml", "env.json", "metrics.json", "report.md", "0-train/model.h5",
                 "0-train/stage.json", "0-train/eval.json", "0-train/history.json"):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "0-train" / "tensorboard").rglob("*tfevents*"))
    assert any((run_dir / "tensorboard" / "hparams").glob("*tfevents*"))  # recipe + ledger
    assert any((run_dir / "tensorboard" / "ledger" / "train.savedmodel").glob("*tfevents*"))
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["tensorflow"].startswith("2.21")
    assert env["distribution"]["strategy"] == "cpu"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keras_rec, saved_rec = metrics["records"]
    assert keras_rec["artifact"] == "keras" and keras_rec["examples"] == 872
    assert keras_rec["metrics"]["accuracy"] > 0.6  # 2,000 real rows beat chance (0.51)
    assert saved_rec["artifact"] == "savedmodel" and saved_rec["agreement"] == 1.0
    assert saved_rec["max_abs_diff"] <= 1e-4
    export = exports / "tiny" / "1"
    assert (export / "saved_model.pb").exists()
    assert (export / "assets" / "labels.txt").read_text().split() == ["negative", "positive"]
    report = (run_dir / "report.md").read_text()
    assert "## Summary" in report and "**Recommended, smallest:** `savedmodel`" in report
    assert re.search(r"\| train \| 0\.\d{4} \| 0\.\d{4} \|", report)  # stage row
    assert "| train | savedmodel | tf |" in report
    assert 'src="data:image/png;base64,' in (run_dir / "report.html").read_text()
    saved = json.loads((run_dir / "metrics.json").read_text())["records"][1]
    assert saved["path"] == "artifacts/savedmodel" and saved["gate"] == "passed"

    # The export serves raw token ids through its named signature.
    import tensorflow as tf
    fn = tf.saved_model.load(str(export)).signatures["serving_default"]
    assert set(fn.structured_input_signature[1]) == {"input_ids", "attention_mask",
                                                     "token_type_ids"}
    ids = tf.constant([[101, 2307, 3185, 102]], tf.int32)
    result = fn(input_ids=ids, attention_mask=tf.ones_like(ids), token_type_ids=tf.zeros_like(ids))
    assert np.isclose(result["probabilities"].numpy().sum(), 1.0, atol=1e-5)

    # A second run exports the next version; --resume reuses the finished stage.
    proc = run_cli(TINY, f"--output_dir={out}", f"--set=export.dir={exports}", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage train: unchanged" in proc.stdout
    assert (exports / "tiny" / "2" / "saved_model.pb").exists()


def test_kill_mid_stage_then_resume(tmp_path, sst2_dir):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(f"""base: {TINY}
name: two
model: {{layers: [0]}}
data: {{max_train_examples: 400}}
export: {{formats: []}}
stages:
  - {{type: train, steps: 8, evals: 1}}
  - {{type: train, name: second, steps: 400, evals: 4, learning_rate: 1.0e-5}}
""")
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "tfdeploy.run", str(recipe), f"--output_dir={out}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    second = None
    while time.time() < deadline and proc.poll() is None:
        runs = list((out / "two").glob("*/1-second/started.json")) if out.exists() else []
        if runs:
            second = runs[0].parent
            break
        time.sleep(0.5)
    assert second is not None, proc.communicate()[0][-3000:]
    time.sleep(4)  # well inside the second stage (400 steps)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_done = second.parent / "0-train" / "stage.json"
    mtime = first_done.stat().st_mtime
    assert not (second / "stage.json").exists()  # killed: not finished, so not trusted

    resumed = run_cli(str(recipe), f"--output_dir={out}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage train: unchanged" in resumed.stdout
    assert "stage second (train): running" in resumed.stdout
    assert first_done.stat().st_mtime == mtime  # the finished stage did not rerun
    assert (second / "stage.json").exists()
    assert len(list((out / "two").iterdir())) == 1  # resumed in the same run directory
    metrics = json.loads((second.parent / "metrics.json").read_text())
    assert [r["stage"] for r in metrics["records"]] == ["train", "second"]


def test_bad_input_exits_2_without_traceback(tmp_path, sst2_dir):
    out = tmp_path / "runs"
    cases = [
        ([TINY, "--set=stages.0.warmup=1.3"], "stages[0].warmup: 1.3 is not in [0, 1)"),
        ([TINY, "--set=stages.7.epochs=1"], "index 7 is out of range"),
        ([str(tmp_path / "missing.yaml")], "recipe file not found"),
        ([TINY, f"--set=data.dir={tmp_path}", "--set=data.download=false"],
         "SST-2 not found"),
        ([TINY, "--set=model.checkpoint=" + str(tmp_path)], "config.json missing"),
        ([TINY, "--stages=nosuch"], "no stage named 'nosuch'"),
    ]
    for args, message in cases:
        proc = run_cli(*args, f"--output_dir={out}")
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing written


def test_dry_run_preflight_writes_nothing(tmp_path, sst2_dir):
    out = tmp_path / "runs"
    proc = run_cli(TINY, f"--output_dir={out}", "--dry_run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learning_rate: 0.0001" in proc.stdout  # the resolved recipe, defaults included
    assert "data: 2000 train / 872 validation examples" in proc.stdout
    assert "layer_1_intermediate" in proc.stdout and "trained" in proc.stdout
    assert not out.exists()
