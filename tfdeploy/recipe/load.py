"""Read a recipe: YAML with line numbers, ``base:`` includes, ``--set`` overrides and
``${path}`` references, then validate it into a typed :class:`Recipe`.

Nothing here writes files: a recipe that fails to load leaves no trace.
"""
import copy
import os
import re

import yaml

from tfdeploy.errors import RecipeError, TfdeployError
from tfdeploy.recipe.overrides import apply_overrides
from tfdeploy.recipe.validate import format_path, validate

_REF = re.compile(r"\$\{([^}]+)\}")


def read_yaml(path):
    """Return (tree, locations): the plain tree and a map path-tuple -> 'file:line'."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TfdeployError(f"recipe file not found: {path}") from None
    except OSError as e:
        raise TfdeployError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise RecipeError([("", f"invalid YAML: {getattr(e, 'problem', e)}", where)]) from None
    locations = {}
    if node is None:
        return {}, locations
    constructor = yaml.SafeLoader("")

    def walk(n, p):
        locations[p] = f"{path}:{n.start_mark.line + 1}"
        if isinstance(n, yaml.MappingNode):
            out = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    raise RecipeError([(format_path(p + (key,)), "duplicate key",
                                        f"{path}:{key_node.start_mark.line + 1}")])
                out[key] = walk(value_node, p + (key,))
                locations[p + (key,)] = f"{path}:{key_node.start_mark.line + 1}"
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, p + (i,)) for i, v in enumerate(n.value)]
        try:
            return constructor.construct_object(n, deep=True)
        except yaml.YAMLError as e:
            raise RecipeError([(format_path(p), f"invalid value: {e}", locations[p])]) from None

    tree = walk(node, ())
    if not isinstance(tree, dict):
        raise RecipeError([("", "a recipe must be a mapping of sections", f"{path}:1")])
    return tree, locations


def merge(base, child):
    """Child values win; mappings merge key by key; lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(child, dict):
        out = dict(base)
        for key, value in child.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return child


def read_with_bases(path, _seen=()):
    """Read ``path`` and the chain of recipes it names in ``base:`` (relative to itself)."""
    real = os.path.realpath(path)
    if real in _seen:
        raise TfdeployError(f"recipe includes itself: {' -> '.join(_seen + (real,))}")
    tree, locations = read_yaml(path)
    base = tree.pop("base", None)
    if base is None:
        return tree, locations
    if not isinstance(base, str):
        raise RecipeError([("base", "expected a path to another recipe", locations[("base",)])])
    base_path = os.path.join(os.path.dirname(path), base)
    if not os.path.exists(base_path):
        raise RecipeError([("base", f"base recipe not found: {base_path}",
                            locations[("base",)])])
    base_tree, base_locations = read_with_bases(base_path, _seen + (real,))
    return merge(base_tree, tree), {**base_locations, **locations}


def resolve_references(tree, locations):
    """Replace ``${a.b}`` with the value at that path (typed when it is the whole string)."""
    problems = []

    def lookup(ref, at, stack):
        node = tree
        for part in ref.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                problems.append((format_path(at), f"${{{ref}}} refers to a key that is not set",
                                 locations.get(at)))
                return None
        if ref in stack:
            problems.append((format_path(at), f"${{{ref}}} refers to itself", locations.get(at)))
            return None
        return resolve(node, at, stack + (ref,))

    def resolve(node, at, stack=()):
        if isinstance(node, dict):
            return {k: resolve(v, at + (k,), stack) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, at + (i,), stack) for i, v in enumerate(node)]
        if isinstance(node, str):
            whole = _REF.fullmatch(node.strip())
            if whole:
                return lookup(whole.group(1).strip(), at, stack)
            if not _REF.search(node):
                return node  # unchanged (keeps an override's text type)
            return type(node)(_REF.sub(lambda m: str(lookup(m.group(1).strip(), at, stack)),
                                       node))
        return node

    out = resolve(tree, ())
    if problems:
        raise RecipeError(problems)
    return out


def load_tree(path, overrides=()):
    """The merged, overridden, reference-resolved plain tree, and its locations."""
    tree, locations = read_with_bases(path)
    tree = apply_overrides(copy.deepcopy(tree), overrides, locations)
    return resolve_references(tree, locations), locations


def load_recipe(path, overrides=()):
    """Load and validate a recipe file; raise RecipeError naming every problem."""
    from tfdeploy.recipe.schema import Recipe  # imports the plugin registries

    tree, locations = load_tree(path, overrides)
    return validate(Recipe, tree, locations)
