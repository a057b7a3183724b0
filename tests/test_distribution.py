"""The strategy layer: every stage under MirroredStrategy on 2 logical CPUs, replicas in
sync, a mirrored recipe run matching one device, and clear errors before any work."""
import json
import os
import subprocess
import sys

import pytest

from tfdeploy.errors import TfdeployError
from tfdeploy.strategy import parse_tf_config

from conftest import ROOT, run_cli

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


def test_every_stage_under_mirrored(tmp_path, small_bert_dir, sst2_dir):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mirrored_check.py"),
                           str(small_bert_dir), str(tmp_path)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["replicas"] == 2
    assert set(result["stages"]) == {"train", "prune", "cluster", "qat", "distill"}
    for name, entry in result["stages"].items():
        assert entry["replica_max_diff"] == 0.0, name  # replicas hold identical weights
    prune = result["stages"]["prune"]["report"]
    assert all(abs(v - 0.5) < 0.005 for v in prune["layers"].values())
    assert result["stages"]["cluster"]["report"]["unique_weights"]["layer_0_intermediate"] <= 8
    assert result["stages"]["qat"]["int8_fc"] and result["stages"]["qat"]["tflite_runs"]


def test_mirrored_recipe_matches_one_device(tmp_path, sst2_dir):
    accuracies = {}
    common = [TINY, "--set=model.layers=[0]", "--set=data.max_train_examples=1000",
              "--set=export.formats=[]", "--set=output.tensorboard=false"]
    for name, extra in (("one", ["--strategy=cpu", "--set=stages.0.batch_size=32"]),
                        ("mirrored", ["--strategy=mirrored", "--set=distribution.logical_cpus=2",
                                      "--set=stages.0.batch_size=16"])):
        out = tmp_path / name
        proc = run_cli(*common, *extra, f"--output_dir={out}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run_dir,) = (out / "tiny").iterdir()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["strategy"]["replicas"] == (2 if name == "mirrored" else 1)
        accuracies[name] = metrics["records"][0]["metrics"]["accuracy"]
    # Same global batch (32), same data: within noise (872 examples, ~1.6 points std).
    assert abs(accuracies["one"] - accuracies["mirrored"]) <= 0.03, accuracies


@pytest.mark.parametrize("args,message", [
    (["--strategy=tpu"], "no TPU reachable"),
    (["--strategy=mirrored", "--set=distribution.devices=[/gpu:3]"],
     "'/gpu:3' does not exist here"),
    (["--strategy=multi_worker"], "multi_worker needs TF_CONFIG"),
    (["--set=distribution.strategy=gpu"], "distribution.strategy: 'gpu' is not one of"),
])
def test_bad_distribution_fails_before_work(tmp_path, args, message):
    proc = run_cli(TINY, *args, f"--output_dir={tmp_path / 'runs'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "'cluster' must map"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker"}}',
     "'task' must have 'type' and 'index'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "task worker:3 is not in the cluster"),
])
def test_malformed_tf_config(text, message):
    with pytest.raises(TfdeployError, match=message):
        parse_tf_config(text)
