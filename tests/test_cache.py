"""The stage cache key changes with everything that changes a stage's output, and only
with that: the same inputs give the same key across recipes and run directories."""
import os

import pytest

import tfdeploy
from tfdeploy import cache, pipeline
from tfdeploy.recipe import load_recipe

from conftest import ROOT

STAGES = "[{type: train, steps: 2}, {type: prune, steps: 2, final_sparsity: %s}]"


@pytest.fixture
def inputs(tmp_path, sst2_dir, small_bert_dir):
    """A copy of real SST-2 rows and of the small checkpoint, which the test may edit."""
    data = tmp_path / "sst2"
    data.mkdir()
    for name, rows in (("train.tsv", 400), ("dev.tsv", 100)):
        with open(os.path.join(sst2_dir, name), encoding="utf-8") as f:
            lines = [next(f) for _ in range(rows + 1)]
        (data / name).write_text("".join(lines), encoding="utf-8")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in os.listdir(small_bert_dir):
        (ckpt / name).write_bytes((small_bert_dir / name).read_bytes())
    return data, ckpt


def keys(data, ckpt, *overrides, sparsity=0.5):
    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny.yaml"), [
        f"data.dir={data}", f"model.checkpoint={ckpt}", "model.layers=null",
        f"stages={STAGES % sparsity}", *overrides])
    context, stage_list = pipeline.prepare(recipe, pipeline.Options())
    return cache.stage_keys(recipe, context, stage_list)


def append(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_key_covers_every_input(inputs, monkeypatch, tmp_path):
    data, ckpt = inputs
    base = keys(data, ckpt)
    assert len(set(base)) == 2
    # the same inputs hit, whatever the recipe is called or where its runs go
    assert keys(data, ckpt, "name=other", f"output.dir={tmp_path / 'elsewhere'}") == base
    # a later stage's config changes only its own key
    changed = keys(data, ckpt, sparsity=0.6)
    assert changed[0] == base[0] and changed[1] != base[1]
    # the selection split (what keep_best chooses on) and the seed
    assert keys(data, ckpt, "data.selection_split=0.1")[0] != base[0]
    assert keys(data, ckpt, "seed=7")[0] != base[0]
    # the data bytes
    append(data / "train.tsv", "a late extra row\t1\n")
    after_data = keys(data, ckpt)
    assert after_data[0] != base[0]
    # the checkpoint bytes
    append(ckpt / "config.json", "\n")
    after_ckpt = keys(data, ckpt)
    assert after_ckpt[0] != after_data[0]
    # the replica count (the global batch)
    from tfdeploy.context import Context
    monkeypatch.setattr(Context, "replicas", property(lambda self: 2))
    assert keys(data, ckpt)[0] != after_ckpt[0]
    monkeypatch.undo()
    assert keys(data, ckpt) == after_ckpt
    # a stage's revision (its code changed what it makes) changes its own key only
    from tfdeploy.stages import STAGES
    monkeypatch.setattr(STAGES.get("prune"), "revision", 1)
    revised = keys(data, ckpt)
    assert revised[0] == after_ckpt[0] and revised[1] != after_ckpt[1]
    monkeypatch.undo()
    # tfdeploy's version (TF and TFMOT versions enter the same way)
    monkeypatch.setattr(tfdeploy, "__version__", "99.0")
    assert keys(data, ckpt)[0] != after_ckpt[0]


def test_teacher_file_is_part_of_the_key(inputs, tmp_path):
    data, ckpt = inputs
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.h5").write_bytes(b"first teacher")
    stage = (f"stages=[{{type: train, steps: 2}}, {{type: qat, steps: 2, alpha: 0.5, "
             f"teacher: {teacher}}}]")
    first = keys(data, ckpt, stage)
    (teacher / "model.h5").write_bytes(b"another teacher")
    second = keys(data, ckpt, stage)
    assert first[0] == second[0] and first[1] != second[1]


def test_file_digest_is_memoised_and_follows_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDEPLOY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "data.bin"
    path.write_bytes(b"one")
    first = cache.file_digest(str(path))
    assert first == cache.sha256(str(path))
    assert (tmp_path / "cache" / "digests.json").exists()
    path.write_bytes(b"two!")
    assert cache.file_digest(str(path)) != first
