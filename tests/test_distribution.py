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
    assert set(result["stages"]) == {"train", "prune", "cluster", "qat", "distill",
                                      "prune_gradient"}
    for name, entry in result["stages"].items():
        assert entry["replica_max_diff"] == 0.0, name  # replicas hold identical weights
    for name in ("prune", "prune_gradient"):  # masks agree across replicas (diff 0 above)
        prune = result["stages"][name]["report"]
        assert all(abs(v - 0.5) < 0.005 for v in prune["layers"].values()), name
    assert result["stages"]["prune_gradient"]["report"]["criterion"] == "gradient"
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


def test_tpu_refuses_tfmot_stages_before_work():
    """No TPU here, so the check is called with the description a TPU run would record."""
    from tfdeploy import stages
    from tfdeploy.recipe import load_recipe

    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny.yaml"), [
        "stages=[{type: train}, {type: prune}, {type: qat}, {type: distill, student_layers: [0]}]"])
    stage_list = [(cfg, stages.create(cfg)) for cfg in recipe.stages]
    with pytest.raises(TfdeployError) as err:
        stages.check_strategy(stage_list, {"device_kind": "tpu"})
    text = str(err.value)
    assert "stage prune (prune)" in text and "merge_call" in text and "stage qat (qat)" in text
    assert "stage train" not in text and "distill" not in text
    stages.check_strategy(stage_list, {"device_kind": "cpu"})  # fine elsewhere
    stages.check_strategy([stage_list[0], stage_list[3]], {"device_kind": "tpu"})
