"""Hostile input: a seeded recipe fuzzer (every case one clear message, exit 2, nothing
written), planted stage outputs that would run code, paths that are files, finished runs
that must stay as they are, concurrent publishing."""
import json
import os
import random
import threading

import numpy as np
import pytest

from tfdeploy import cache, evaluate, pipeline, publish, stage_runs
from tfdeploy.errors import TfdeployError
from tfdeploy.recipe import load_recipe
from tfdeploy.run import execute

from conftest import ROOT, run_cli

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")

# (path, bad values) for --set and for the YAML itself: non-numbers, NaN/inf, out of
# bounds, wrong shapes, huge values.
FIELD_VALUES = {
    "seed": ["-1", "2**70", "1180591620717411303424", "1.5", "abc", "[1]", "{a: 1}", "nan"],
    "stages.0.epochs": [".nan", ".inf", "-.inf", "nan", "inf", "-1", "0", "abc", "[1]",
                        "1" + "0" * 400 + ".0"],
    "stages.0.learning_rate": ["nan", "inf", "-1e-4", "0", "abc", "{}", "null"],
    "stages.0.batch_size": ["0", "-3", str(10 ** 30), "1.5", "x", "[32]"],
    "stages.0.warmup": ["1.3", "-0.1", "nan", "abc"],
    "stages.0.steps": ["-1", str(10 ** 12), "1.5", "abc"],
    "stages.0.evals": ["-1", "abc", str(10 ** 9)],
    "stages.0.optimizer": ["adamx", "1", "[adam]", "{}"],
    "stages.0.name": ["../../x", "/abs", ".hidden", "a/b", "x" * 100, "''", "[a]"],
    "stages.0.type": ["[train]", "{a: 1}", "nosuchstage", "1", "null"],
    "model.type": ["[bert]", "{type: bert}", "gpt", "1"],
    "model.layers": ["[0, 9]", "abc", "[-1]", "{}"],
    "model.dropout": ["1.0", "-0.1", "nan", "abc"],
    "model.pooling": ["max", "1", "[mean]"],
    "data.type": ["[sst2]", "imagenet", "{}"],
    "data.max_length": ["0", "2", "100000", "abc", "nan"],
    "data.buckets": ["[0, -5]", "[100000]", "abc", "[a]", "[" + ",".join(["8"] * 100) + "]"],
    "data.max_train_examples": ["-1", "abc", "1.5"],
    "data.selection_split": ["0.7", "-0.1", "nan", "abc", "1"],
    "data.dir": ["[a]", "{}"],
    "evaluate.batch_size": ["0", str(10 ** 9), "abc"],
    "evaluate.max_drop": ["-0.1", "nan", "inf", "abc"],
    "evaluate.float_tolerance": ["0", "-1", "nan", "abc"],
    "export.formats": ["[pdf]", "pdf", "[[savedmodel]]", "{}"],
    "export.version": ["-1", "abc", "1.5"],
    "export.opset": ["3", "99", "abc"],
    "export.calibration_examples": ["0", str(10 ** 9), "abc"],
    "export.int8_fallback": ["sometimes", "1"],
    "benchmark.batch_sizes": ["[0, -1]", "[0]", "[100000]", "abc"],
    "benchmark.seq_length": ["100000", "1", "abc"],
    "benchmark.seconds": ["0", "nan", "-1", "1e9"],
    "benchmark.runs": ["0", "abc"],
    "distribution.strategy": ["gpu", "[cpu]", "1"],
    "distribution.logical_cpus": ["-2", "1000", "abc"],
    "output.tensorboard": ["'yes'", "2", "[true]"],
    "name": ["''", "../x", "a b", "x" * 5000, "[a]", "-lead"],
}

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"] +
    [f"{c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")])

# Whole files: YAML and encoding attacks, structure, cross-field rules.
FILES = {
    "billion laughs": (BILLION_LAUGHS.encode(), "aliases"),
    "recursive alias": (b"x: &x [*x]\n", "nested deeper"),
    "deep nesting": (b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested"),
    "deep mapping": (("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 60))).encode(),
                     "nested deeper"),
    "python tag": (b"name: x\nmodel: !!python/object:os.system {a: 1}\n", "tag"),
    "python tag on key": (b"name: x\n!!python/name:os.system : 1\n", "tag"),
    "merge key": (b"name: x\nmodel: {<<: {type: bert}}\n", "merge keys"),
    "non-utf8": (b"name: caf\xe9\n", "UTF-8"),
    "utf16": ("name: x\n".encode("utf-16"), "UTF-8"),
    "binary": (bytes(range(256)) * 4, "UTF-8"),
    "nul bytes": (b"name: x\x00\x00\n", "YAML"),
    "list root": (b"- a\n- b\n", "mapping"),
    "scalar root": (b"just text\n", "mapping"),
    "duplicate key": (b"name: a\nname: b\n", "duplicate"),
    "list key": (b"name: x\n[1, 2]: 3\n", "keys must be plain text"),
    "unclosed": (b"name: [x\n", "YAML"),
    "tab indent": (b"name: x\nmodel:\n\ttype: bert\n", "YAML"),
    "huge file": (b"# " + b"x" * (2 << 20) + b"\n", "larger than"),
    "missing name": (b"model: {type: bert}\ndata: {type: sst2}\n", "name"),
    "missing model": (b"name: x\ndata: {type: sst2}\n", "model"),
    "unknown section": (b"name: x\nmodle: {type: bert}\n", "modle"),
    "stage not mapping": (b"base: tiny.yaml\nstages: [train]\n", "stages[0]"),
    "stages mapping": (b"base: tiny.yaml\nstages: {type: train}\n", "stages"),
    "self base": (b"base: self.yaml\nname: x\n", "includes itself"),
    "missing base": (b"base: nowhere.yaml\nname: x\n", "base"),
    "base is list": (b"base: [a]\nname: x\n", "base"),
    "base is dir": (b"base: .\nname: x\n", "base"),
    "distill first": (b"base: tiny.yaml\nstages: [{type: distill, student_layers: [0]}]\n",
                      "earlier stage"),
    "distill layers": (b"base: tiny.yaml\nstages: [{type: train, steps: 1}, "
                       b"{type: distill, student_layers: [0, 9]}]\n", "student_layers"),
    "distill student": (b"base: tiny.yaml\nstages: [{type: train, steps: 1}, "
                        b"{type: distill, student: {layers: abc}}]\n", "student"),
    "prune end<begin": (b"base: tiny.yaml\nstages: [{type: prune, begin_step: 50, "
                        b"end_step: 10}]\n", "end_step"),
    "teacher nowhere": (b"base: tiny.yaml\nstages: [{type: train, steps: 1}, {type: qat, "
                        b"alpha: 0.5, teacher: /no/such/dir}]\n", "teacher"),
    "from unknown": (b"base: tiny.yaml\n", None),  # with --from below
    "arch zero heads": (b"base: tiny.yaml\nmodel: {checkpoint: null, vocab: minilm-l6, "
                        b"architecture: {num_attention_heads: 0}}\n", "num_attention_heads"),
    "arch text size": (b"base: tiny.yaml\nmodel: {checkpoint: null, vocab: minilm-l6, "
                       b"architecture: {hidden_size: abc}}\n", "hidden_size"),
    "arch negative": (b"base: tiny.yaml\nmodel: {checkpoint: null, vocab: minilm-l6, "
                      b"architecture: {hidden_size: -12}}\n", "hidden_size"),
    "cnn with text": (b"base: tiny.yaml\nmodel: {type: cnn}\n", "model"),
    "teacher with alpha 1": (b"base: tiny.yaml\nstages: [{type: qat, teacher: nosuchstage}]\n",
                             "teacher"),
}


def cases(seed=0):
    """(id, file bytes or None, overrides, extra options, what the message must name)."""
    rng = random.Random(seed)
    out = []
    for path, values in FIELD_VALUES.items():
        for value in values:
            out.append((f"set {path}={value[:20]}", None, [f"{path}={value}"], {}, path))
            # the same value written in the YAML itself (a sample: every third)
            if rng.random() < 0.35 and "\n" not in value:
                out.append((f"yaml {path}={value[:20]}", yaml_with(path, value), [], {}, path))
    for name, (data, expected) in FILES.items():
        options = {"start_from": "nosuchstage"} if name == "from unknown" else {}
        out.append((name, data, [], options, expected or "nosuchstage"))
    for bad in ("stages.9.epochs=1", "nosuch.key=1", "stages.train.nosuch=1", "=1", "novalue",
                "stages..x=1", "stages.-1.epochs=1"):
        out.append((f"override {bad}", None, [bad], {}, None))
    return out


def shown(path):
    """How messages write a key path: stages[0].epochs."""
    return path.replace("stages.0", "stages[0]")


def yaml_with(path, value):
    parts = path.split(".")
    if parts[0] == "stages" and parts[2] == "type":
        text = f"stages: [{{type: {value}}}]\n"
    elif parts[0] == "stages":
        text = f"stages: [{{type: train, {parts[2]}: {value}}}]\n"
    elif len(parts) == 1:
        text = f"{parts[0]}: {value}\n"
    else:
        text = f"{parts[0]}: {{{parts[1]}: {value}}}\n"
    return ("base: tiny.yaml\n" + text).encode()


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory, small_bert_dir, sst2_dir):
    """tiny.yaml on the small checkpoint, in a folder of its own (so `base:` files and
    anything a case might write are in one place)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "tiny.yaml").write_text(f"""base: {TINY}
model: {{checkpoint: {small_bert_dir}, layers: null}}
data: {{dir: {sst2_dir}, download: false, max_train_examples: 200}}
evaluate: {{max_examples: 50}}
export: {{dir: {tmp / 'exports'}}}
output: {{dir: {tmp / 'runs'}, tensorboard: false}}
""")
    return tmp


def run_case(tmp, data, overrides, options, capsys):
    path = tmp / "case.yaml"
    if data is None:
        path = tmp / "tiny.yaml"
    else:
        path.write_bytes(data)
        if b"self.yaml" in data:
            path = tmp / "self.yaml"
            path.write_bytes(data)
    code = execute(str(path), overrides, dry_run=True, **options)
    return code, capsys.readouterr()


def test_fuzzer_every_case_is_one_clear_error_and_writes_nothing(fuzz_base, capsys):
    all_cases = cases()
    assert len(all_cases) >= 200, len(all_cases)
    before = sorted(os.listdir(fuzz_base))
    failures = []
    for case_id, data, overrides, options, expected in all_cases:
        try:
            code, out = run_case(fuzz_base, data, overrides, options, capsys)
        except BaseException as e:  # noqa: BLE001  (a crash is what this test looks for)
            failures.append(f"{case_id}: raised {type(e).__name__}: {e}"[:300])
            continue
        lines = [l for l in out.err.splitlines() if l.startswith("error:")]
        if code != 2 or len(lines) != 1 or "Traceback" in out.err:
            failures.append(f"{case_id}: exit {code}, stderr {out.err[-300:]!r}")
        elif expected and shown(expected).lower() not in out.err.lower():
            failures.append(f"{case_id}: message does not name {expected!r}: {out.err[-300:]}")
        written = sorted(set(os.listdir(fuzz_base)) - set(before) - {"case.yaml", "self.yaml"})
        if written:
            failures.append(f"{case_id}: wrote {written}")
    print(f"fuzzer: {len(all_cases)} cases, {len(all_cases) - len(failures)} clean")
    assert not failures, "\n".join(failures)


def test_fuzzer_sample_through_the_real_cli(fuzz_base):
    sample = [c for c in cases() if c[0] in ("set stages.0.epochs=.nan", "billion laughs",
                                             "non-utf8", "python tag", "set stages.0.name=../../x")]
    assert len(sample) == 5
    for case_id, data, overrides, options, expected in sample:
        path = fuzz_base / "tiny.yaml"
        if data is not None:
            path = fuzz_base / "cli_case.yaml"
            path.write_bytes(data)
        proc = run_cli(str(path), "--dry_run", *[f"--set={o}" for o in overrides],
                       timeout=120)
        assert proc.returncode == 2, (case_id, proc.stderr[-1000:])
        assert "Traceback" not in proc.stderr and shown(expected).lower() in proc.stderr.lower()


def lambda_model_file(path, marker):
    import tf_keras as keras

    def leave_marker(t):  # stored as bytecode in the H5; leaves a marker when it runs
        open(marker, "a").close()
        return t

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(leave_marker),
                              keras.layers.Dense(2)])
    model.save(path)
    os.remove(marker)  # building the model ran it once


def test_planted_stage_output_never_runs(fuzz_base, tmp_path):
    """A stage output planted under the output dir, with the right key and digests and a
    Lambda in its model.h5, is not reused (nothing runs); the stage runs instead."""
    out = tmp_path / "runs"
    recipe = load_recipe(str(fuzz_base / "tiny.yaml"),
                         [f"output.dir={out}", "stages=[{type: train, steps: 2}]",
                          "export.formats=[]"])
    context, stage_list = pipeline.prepare(recipe, pipeline.Options())
    (key,) = cache.stage_keys(recipe, context, stage_list)
    planted = out / "other" / "x" / "0-train"
    planted.mkdir(parents=True)
    marker = str(tmp_path / "ran")
    lambda_model_file(str(planted / "model.h5"), marker)
    (planted / "eval.json").write_text(json.dumps({"artifact": "keras"}))
    cache.mark_done(str(planted), key, {"name": "train"})
    assert cache.sha256(str(planted / "model.h5"))  # digests match: only the Lambda differs
    proc = run_cli(str(fuzz_base / "tiny.yaml"), f"--output_dir={out}", "--resume",
                   "--set=stages=[{type: train, steps: 2}]", "--set=export.formats=[]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage train (train): running" in proc.stdout
    assert not os.path.exists(marker)
    # named as a teacher, the same file is refused with a clear message
    proc = run_cli(str(fuzz_base / "tiny.yaml"), f"--output_dir={tmp_path / 'r2'}",
                   f"--set=stages=[{{type: train, steps: 2}}, {{type: qat, steps: 2, "
                   f"alpha: 0.5, teacher: {planted}}}]", "--set=export.formats=[]")
    assert proc.returncode == 2 and "Lambda" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(marker)


def test_output_dir_that_is_a_file_is_refused_before_work(fuzz_base, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for flag in (f"--output_dir={blocker / 'runs'}", f"--set=export.dir={blocker}"):
        proc = run_cli(str(fuzz_base / "tiny.yaml"), flag, "--set=stages=[]", timeout=300)
        assert proc.returncode == 2, proc.stderr[-1000:]
        assert "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr
        assert "run directory" not in proc.stdout  # refused before any work


def test_resume_never_rewrites_a_finished_run(fuzz_base, tmp_path):
    out = tmp_path / "runs"
    args = (str(fuzz_base / "tiny.yaml"), f"--output_dir={out}",
            "--set=stages=[{type: train, steps: 2}]", "--set=export.formats=[]")
    assert run_cli(*args).returncode == 0
    (first,) = (out / "tiny").iterdir()
    files = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    proc = run_cli(*args, "--resume", "--set=evaluate.max_examples=40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage train: unchanged" in proc.stdout  # its stage reused through the cache
    assert len(list((out / "tiny").iterdir())) == 2  # a new run; the finished one untouched
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == files


def test_nan_outputs_fail_parity_and_the_gate():
    rec = evaluate.record("s", "tflite_fp32", "litert", np.array([[np.nan, 0.0]]),
                          np.array([0]), 0.1, reference=np.array([[1.0, 0.0]]))
    assert evaluate.check_float_parity(rec) is not None
    assert "NaN or inf" in evaluate.check_gate(rec, 0.9, None)


def test_concurrent_publishes_get_distinct_versions(tmp_path):
    source = tmp_path / "sm"
    source.mkdir()
    (source / "saved_model.pb").write_bytes(b"x" * 1000)
    results, errors = [], []

    def one():
        try:
            results.append(publish.publish(str(source), str(tmp_path / "root"), "m"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 6
    names = sorted(os.listdir(tmp_path / "root" / "m"))
    assert [n for n in names if n.isdigit()] == [str(i) for i in range(1, 7)]
    assert oct(os.stat(results[0]).st_mode & 0o777) == "0o755"
    assert oct(os.stat(os.path.join(results[0], "saved_model.pb")).st_mode & 0o777) == "0o644"


def run_until(args, marker, extra_seconds=0.0):
    """Start the CLI, kill -9 it once ``marker`` appears in its output (plus a moment);
    return the output so far. Bounded: 300 s."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy.run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen, deadline = [], time.time() + 300
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                time.sleep(extra_seconds)
                break
            assert time.time() < deadline, "".join(seen[-20:])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert any(marker in l for l in seen), "".join(seen[-20:])
    return "".join(seen)


def published_versions(exports):
    folder = exports / "tiny"
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.exists() \
        else []


@pytest.mark.parametrize("marker,wait", [
    ("stage train (train): running", 3.0),     # in training
    ("stage train: validation accuracy", 0.0),  # between stages
    ("export savedmodel:", 0.0),                # during export (tflite next)
    ("export tflite_fp32:", 0.0),               # before publishing
])
def test_kill_and_resume(fuzz_base, tmp_path, marker, wait):
    """kill -9 at a point of the run, then --resume: it finishes; nothing unevaluated was
    ever published; no partial file is left in the run."""
    out, exports = tmp_path / "runs", tmp_path / "exports"
    args = [str(fuzz_base / "tiny.yaml"), f"--output_dir={out}", f"--set=export.dir={exports}",
            "--set=stages=[{type: train, steps: 30, evals: 3}, {type: train, name: again, "
            "steps: 4}]", "--set=export.formats=[savedmodel, tflite_fp32, tflite_dynamic_int8]"]
    run_until(args, marker, wait)
    assert published_versions(exports) == []  # killed before its gates: nothing published
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert published_versions(exports) == ["1"]
    (run_dir,) = (out / "tiny").iterdir()  # the killed run was continued, not duplicated
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    assert [r["artifact"] for r in records] == ["keras", "keras", "savedmodel", "tflite_fp32",
                                                "tflite_dynamic_int8"]
    assert not [p for p in run_dir.rglob(".tmp*")]
    assert not [p for p in (exports / "tiny").iterdir() if p.name.startswith(".tmp")]
    # the history has every evaluation period, also those before the kill
    history = json.loads((run_dir / "0-train" / "history.json").read_text())
    assert len(history["val_accuracy"]) == 3 and 0 <= history["best_epoch"] < 3


def test_second_run_of_a_training_stage_is_refused_while_the_first_holds_it(fuzz_base,
                                                                             tmp_path):
    import fcntl

    recipe = load_recipe(str(fuzz_base / "tiny.yaml"), [f"output.dir={tmp_path}"])
    context, _ = pipeline.prepare(recipe, pipeline.Options())
    context.backup_dir = str(tmp_path / ".backups" / "tiny-x-r1")
    os.makedirs(tmp_path / ".backups")
    with open(context.backup_dir + ".lock", "a") as other:  # the first run, training
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(TfdeployError, match="another run is training"):
            with stage_runs.backup_lock(context):
                pass
    with stage_runs.backup_lock(context):  # free again
        pass
