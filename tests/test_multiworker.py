"""Multi-worker: two real worker processes on 127.0.0.1 (free ports, bounded in time) run
the same small recipe with MultiWorkerMirroredStrategy; the chief keeps the artifacts, the
other worker leaves nothing, and the result matches a single-process run. A worker killed
mid-run and restarted (with the chief, as a cluster manager does) resumes from the backup."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

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


def _start_workers(cluster, out, logs, *extra):
    procs = []
    for index in range(2):
        log = open(logs / f"worker{index}-{len(list(logs.iterdir()))}.log", "w+")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        # Both workers get the same command and output dir, as under a cluster manager.
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tfdeploy.run", TINY, "--strategy=multi_worker", *COMMON,
             "--set=stages.0.batch_size=16", "--set=stages.0.epochs=6",
             "--set=stages.0.evals=6", f"--output_dir={out}",
             f"--set=export.dir={out.parent / 'exports'}", *extra],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        procs[-1].log = log  # a file, not a pipe: nobody reads while it runs
    return procs


def _output(proc):
    proc.log.seek(0)
    return proc.log.read()


def _finish(procs, timeout):
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            proc.kill()
    return [_output(proc) for proc in procs]


def test_killed_worker_restarts_from_backup(tmp_path, sst2_dir):
    """Kill the non-chief worker after the first backup; the chief fails (or is stopped, as
    a cluster manager would); both restart with --resume and continue from the backup."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    out, logs = tmp_path / "runs", tmp_path / "logs"
    logs.mkdir()
    procs = _start_workers(cluster, out, logs)
    deadline = time.time() + 300
    backups = out / ".backups"
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if list(backups.glob("*/chief/checkpoint")):
            break
        time.sleep(0.2)
    assert list(backups.glob("*/chief/checkpoint")), _finish(procs, 5)[0][-3000:]
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:  # the chief notices the lost peer (collective health check) or is stopped
        procs[0].wait(timeout=90)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert not list(out.rglob("0-train/stage.json")), _output(procs[0])[-2000:]  # unfinished

    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = _start_workers(cluster, out, logs, "--resume")
    outputs = _finish(procs, 600)
    for proc, text in zip(procs, outputs):
        assert proc.returncode == 0, text[-3000:]
        assert "resuming from backup" in text, text[-3000:]
        epochs = re.findall(r"stage train: period (\d+)/6", text)
        assert epochs and int(epochs[0]) > 1, epochs  # continued, not restarted at 1
    (run,) = (out / "tiny").iterdir()  # one run directory: the chief's, resumed
    assert (run / "0-train" / "stage.json").exists()
    assert (tmp_path / "exports" / "tiny" / "1" / "saved_model.pb").exists()
    # finished: the backup is gone, workers' temp dirs too
    assert not backups.exists() or not list(backups.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"]["replicas"] == 2
