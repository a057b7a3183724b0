"""Multi-worker: two real worker processes on 127.0.0.1 (free ports, bounded in time) run
the same small recipe with MultiWorkerMirroredStrategy; the chief keeps the artifacts, the
other worker leaves nothing, and the result matches a single-process run."""
import json
import os
import socket
import subprocess
import sys

from conftest import ROOT, run_cli

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")
COMMON = ["--set=model.layers=[0]", "--set=data.max_train_examples=640",
          "--set=evaluate.max_examples=300", "--set=export.formats=[savedmodel]",
          "--set=output.tensorboard=false", "--set=stages.0.learning_rate=2.0e-4"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_match_single_process(tmp_path, sst2_dir):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tfdeploy.run", TINY, "--strategy=multi_worker", *COMMON,
             "--set=stages.0.batch_size=16", f"--output_dir={tmp_path / f'runs{index}'}",
             f"--set=export.dir={tmp_path / f'sm{index}'}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    (chief_run,) = (tmp_path / "runs0" / "tiny").iterdir()
    assert (tmp_path / "sm0" / "tiny" / "1" / "saved_model.pb").exists()
    assert not (tmp_path / "runs1").exists() and not (tmp_path / "sm1").exists()
    multi = json.loads((chief_run / "metrics.json").read_text())
    assert multi["strategy"]["strategy"] == "multi_worker" and multi["strategy"]["replicas"] == 2

    single = run_cli(TINY, "--strategy=cpu", *COMMON, "--set=stages.0.batch_size=32",
                     f"--output_dir={tmp_path / 'single'}", f"--set=export.dir={tmp_path / 'sms'}")
    assert single.returncode == 0, single.stderr[-3000:]
    (single_run,) = (tmp_path / "single" / "tiny").iterdir()
    one = json.loads((single_run / "metrics.json").read_text())
    acc_multi = multi["records"][0]["metrics"]["accuracy"]
    acc_one = one["records"][0]["metrics"]["accuracy"]
    assert abs(acc_multi - acc_one) <= 0.05, (acc_multi, acc_one)
