"""`python -m tfdeploy.schema` prints the recipe's JSON Schema (for editors)."""
import json
import sys


def main():
    from tfdeploy.recipe.jsonschema import recipe_schema

    json.dump(recipe_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
