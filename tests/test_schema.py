"""Recipe validation: good recipes load; each malformed one names its exact key path."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tfdeploy.errors import RecipeError, TfdeployError
from tfdeploy.recipe import load_recipe

from conftest import ROOT

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def on_tiny(tmp_path, text):
    """A recipe that extends recipes/tiny.yaml with ``text``."""
    return write(tmp_path, f"base: {TINY}\n" + textwrap.dedent(text))


def test_shipped_recipes_validate():
    for name in sorted(os.listdir(os.path.join(ROOT, "recipes"))):
        recipe = load_recipe(os.path.join(ROOT, "recipes", name))
        assert recipe.name and recipe.stages


def test_defaults_and_stage_names(tmp_path):
    recipe = load_recipe(on_tiny(tmp_path, """
        stages:
          - {type: train}
          - {type: train, learning_rate: 1.0e-5}
          - {type: train, name: polish}
        """))
    assert [s.name for s in recipe.stages] == ["train", "train_2", "polish"]
    assert recipe.stages[1].learning_rate == 1e-5
    assert recipe.stages[0].batch_size == 32  # default
    assert recipe.distribution.strategy == "auto"


BAD = [
    ("name: 'bad name!'", "name", "does not match"),
    ("model: {type: bertt}", "model.type", "did you mean 'bert'"),
    ("model: {pooling: max}", "model.pooling", "one of 'mean', 'cls'"),
    ("model: {dropout: 1.5}", "model.dropout", "is not in [0, 1)"),
    ("model: {layers: '0,1'}", "model.layers", "expected a list"),
    ("model: {checkpoint: null}", "model.vocab", "needs a vocab"),
    ("model: {checkpoint: null, vocab: x, architecture: {hiden_size: 3}}",
     "model.architecture.hiden_size", "not a BertConfig field"),
    ("model: {extra: 1}", "model.extra", "unknown key"),
    ("data: {type: sst3}", "data.type", "did you mean 'sst2'"),
    ("data: {max_length: 2}", "data.max_length", "is not in [3, 512]"),
    ("data: {max_length: long}", "data.max_length", "expected an integer"),
    ("data: {buckets: [16, x]}", "data.buckets[1]", "expected an integer"),
    ("data: {max_train_examples: -1}", "data.max_train_examples", "is not in [0, inf)"),
    ("data: {type: text, max_train_examples: 0, buckets: [16]}", "data.train",
     "required key missing"),
    ("data: {type: text, train: a.csv, validation_split: 1.0}", "data.validation_split",
     "is not in (0, 1)"),
    ("data: {type: text, train: a.csv, format: xml}", "data.format", "one of"),
    ("stages: [{type: train, epochs: 0}]", "stages[0].epochs", "is not in (0, inf)"),
    ("stages: [{type: train, learning_rate: -1}]", "stages[0].learning_rate", "is not in"),
    ("stages: [{type: train, optimizer: adamww}]", "stages[0].optimizer", "did you mean 'adamw'"),
    ("stages: [{type: train, batch_size: 0}]", "stages[0].batch_size", "is not in [1, 65536]"),
    ("stages: [{type: train, warmup: 1.0}]", "stages[0].warmup", "1.0 is not in [0, 1)"),
    ("stages: [{type: train, learning_rat: 0.1}]", "stages[0].learning_rat",
     "did you mean 'learning_rate'"),
    ("stages: [{type: train}, {type: trian}]", "stages[1].type", "did you mean 'train'"),
    ("stages: [{type: train}, {epochs: 1}]", "stages[1].type", "required key missing"),
    ("stages: [{type: train, name: a}, {type: train, name: a}]", "stages[1].name",
     "used twice"),
    ("stages: train", "stages", "expected a list"),
    ("stages: [train]", "stages[0]", "with a 'type' key"),
    ("stages: [{type: train, keep_best: 3}]", "stages[0].keep_best", "true or false"),
    ("stages: [{type: train, lr_schedule: step}]", "stages[0].lr_schedule", "one of"),
    ("distribution: {strategy: gpu}", "distribution.strategy", "one of"),
    ("distribution: {logical_cpus: -2}", "distribution.logical_cpus", "is not in [0, 64]"),
    ("distribution: {devices: '/gpu:0'}", "distribution.devices", "expected a list"),
    ("distribution: {mixed_precision: fp16}", "distribution.mixed_precision", "one of"),
    ("export: {formats: [pdf]}", "export.formats[0]", "one of"),
    ("export: {version: -1}", "export.version", "is not in [0, inf)"),
    ("evaluate: {batch_size: 0}", "evaluate.batch_size", "is not in [1, 65536]"),
    ("evaluate: {max_drop: -0.1}", "evaluate.max_drop", "is not in [0, inf)"),
    ("evaluate: {split: test}", "evaluate.split", "unknown key"),  # removed: it chose nothing
    ("export: {int8_fallback: sometimes}", "export.int8_fallback", "one of"),
    ("data: {selection_split: 0.7}", "data.selection_split", "is not in [0, 0.5)"),
    ("output: {tensorboard: 'yes'}", "output.tensorboard", "true or false"),
    ("seed: 1.5", "seed", "expected an integer"),
    ("stagse: []", "stagse", "did you mean 'stages'"),
    ("export: {dir: '${data.nowhere}'}", "export.dir", "refers to a key that is not set"),
    ("evaluate: 3", "evaluate", "expected a mapping"),
]


@pytest.mark.parametrize("text,path,message", BAD, ids=[b[1] + ":" + b[0][:20] for b in BAD])
def test_malformed_recipe_names_key_path(tmp_path, text, path, message):
    recipe_path = on_tiny(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_path)
    paths = [p for p, _, _ in err.value.problems]
    assert path in paths, err.value.format()
    problem = err.value.problems[paths.index(path)]
    assert message in problem[1], err.value.format()
    assert problem[2] and problem[2].split(":")[0].endswith(".yaml")  # a file:line location


def test_error_format_has_file_and_line(tmp_path):
    path = write(tmp_path, f"""\
        base: {TINY}
        stages:
          - type: train
            warmup: 1.3
        """)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"stages[0].warmup: 1.3 is not in [0, 1) ({path}:4)"


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(on_tiny(tmp_path, "seed: -1\ndata: {max_length: 1}\n"))
    assert {p for p, _, _ in err.value.problems} == {"seed", "data.max_length"}


def test_missing_sections_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\n"))
    assert {p for p, _, _ in err.value.problems} == {"model", "data"}
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\nmodel: [unclosed\n"))
    assert "invalid YAML" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\nname: y\n"))
    assert "duplicate key" in str(err.value)
    with pytest.raises(TfdeployError, match="not found"):
        load_recipe(str(tmp_path / "absent.yaml"))


def test_references_and_base(tmp_path):
    path = on_tiny(tmp_path, """
        name: derived
        data: {max_length: 48}
        export: {dir: "out/${name}/len${data.max_length}"}
        evaluate: {batch_size: "${data.max_length}"}
        """)
    recipe = load_recipe(path)
    assert recipe.name == "derived" and recipe.data.max_length == 48
    assert recipe.export.dir == "out/derived/len48"
    assert recipe.evaluate.batch_size == 48  # a whole-string reference keeps its type
    assert recipe.model.layers == [0, 1]  # inherited from tiny.yaml
    loop = write(tmp_path, f"base: {tmp_path / 'recipe.yaml'}\n", name="loop.yaml")
    (tmp_path / "recipe.yaml").write_text(f"base: {loop}\n")
    with pytest.raises(TfdeployError, match="includes itself"):
        load_recipe(loop)


def test_json_schema_cli():
    out = subprocess.run([sys.executable, "-m", "tfdeploy.schema"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    schema = json.loads(out)
    stage_types = [s["properties"]["type"]["const"]
                   for s in schema["properties"]["stages"]["items"]["oneOf"]]
    assert "train" in stage_types
    warmup = schema["properties"]["stages"]["items"]["oneOf"][stage_types.index("train")][
        "properties"]["warmup"]
    assert warmup["exclusiveMaximum"] == 1 and warmup["description"]
