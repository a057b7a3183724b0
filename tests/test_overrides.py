"""--set overrides: any schema path, list indices and stage names, typed by the field."""
import os

import pytest

from tfdeploy.errors import RecipeError
from tfdeploy.recipe import load_recipe

from conftest import ROOT

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


def test_override_by_index_and_name():
    recipe = load_recipe(TINY, ["stages.0.learning_rate=3e-5", "stages.train.epochs=2",
                                "data.max_length=48", "distribution.logical_cpus=2"])
    assert recipe.stages[0].learning_rate == 3e-5
    assert recipe.stages[0].epochs == 2.0
    assert recipe.data.max_length == 48 and recipe.distribution.logical_cpus == 2


def test_override_parses_by_field_type():
    recipe = load_recipe(TINY, ["name=123", "model.layers=[0]", "data.buckets=[8, 16]",
                                "output.tensorboard=false", "evaluate.max_drop=0.01"])
    assert recipe.name == "123"  # a str field keeps the text
    assert recipe.model.layers == [0] and recipe.data.buckets == [8, 16]
    assert recipe.output.tensorboard is False and recipe.evaluate.max_drop == 0.01


@pytest.mark.parametrize("override,path,message", [
    ("stages.3.epochs=1", "stages", "index 3 is out of range"),
    ("stages.trian.epochs=1", "stages", "did you mean 'train'"),
    ("stages.0.epocs=1", "stages[0].epocs", "did you mean 'epochs'"),
    ("stages.0.epochs=many", "stages[0].epochs", "expected a number"),
    ("stages.0.warmup=1.3", "stages[0].warmup", "is not in [0, 1)"),
    ("name.first=x", "name", "is a value, not a section"),
    ("data.max_length", "", "expected PATH=VALUE"),
])
def test_bad_override(override, path, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY, [override])
    problem = err.value.problems[0]
    assert problem[0] == path and message in problem[1], err.value.format()
    if path:
        assert problem[2] == f"--set {override}"
