"""The recipe language: schema, loading (includes, references) and overrides."""
from tfdeploy.recipe.load import load_recipe, load_tree  # noqa: F401
