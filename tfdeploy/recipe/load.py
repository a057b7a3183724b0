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
# Bounds checked before anything is expanded: a recipe is a few hundred values.
MAX_BYTES = 1 << 20          # 1 MiB of YAML
MAX_DEPTH = 32               # nesting of mappings and lists
MAX_VALUES = 100_000         # values after aliases are expanded ("billion laughs")
MAX_REFERENCE_CHAIN = 64     # ${} references followed one through another
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in
              ("map", "seq", "str", "int", "float", "bool", "null")}


def read_text(path):
    """The recipe's text: UTF-8, at most MAX_BYTES."""
    try:
        if os.path.isdir(path):
            raise TfdeployError(f"recipe {path}: is a directory, not a YAML file")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise TfdeployError(f"recipe file not found: {path}") from None
    except OSError as e:
        raise TfdeployError(f"cannot read recipe {path}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise TfdeployError(f"recipe {path}: larger than {MAX_BYTES} bytes; not a recipe?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipeError([("", f"not UTF-8 text (byte {e.start}: {data[e.start]:#04x}); "
                                f"save the recipe as UTF-8", f"{path}:{line}")]) from None
    if not text.strip():
        raise TfdeployError(f"recipe {path}: is empty")
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise RecipeError([("", "a NUL byte (a binary file?)", f"{path}:{line}")])
    return text


def compose(text, path):
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise RecipeError([("", f"invalid YAML: {problem}", where)]) from None
    except RecursionError:
        raise RecipeError([("", f"nested more than the YAML reader can follow (a recipe "
                                f"needs at most {MAX_DEPTH} levels)", path)]) from None


def read_yaml(path):
    """Return (tree, locations): the plain tree and a map path-tuple -> 'file:line'."""
    node = compose(read_text(path), path)
    locations = {}
    if node is None:
        return {}, locations
    constructor = yaml.SafeLoader("")
    count = [0]

    def refuse(p, n, message):
        raise RecipeError([(format_path(p), message, f"{path}:{n.start_mark.line + 1}")])

    def scalar(n, p):
        if n.tag not in PLAIN_TAGS:
            refuse(p, n, f"YAML tag {n.tag} is not allowed (plain values only)")
        try:
            return constructor.construct_object(n, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as e:
            refuse(p, n, f"invalid value: {e}")

    def walk(n, p):
        count[0] += 1
        if count[0] > MAX_VALUES:
            refuse(p, n, f"more than {MAX_VALUES} values (aliases that expand without "
                         f"end?)")
        if len(p) > MAX_DEPTH:
            refuse(p[:MAX_DEPTH], n, f"nested deeper than {MAX_DEPTH} levels")
        locations[p] = f"{path}:{n.start_mark.line + 1}"
        if n.tag not in PLAIN_TAGS:
            refuse(p, n, f"YAML tag {n.tag} is not allowed (plain values only)")
        if isinstance(n, yaml.MappingNode):
            out = {}
            for key_node, value_node in n.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    refuse(p, key_node, "merge keys (<<) are not supported; write the keys "
                                        "out")
                key = scalar(key_node, p) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    refuse(p, key_node, "keys must be plain text")
                if key in out:
                    refuse(p + (key,), key_node, "duplicate key")
                out[key] = walk(value_node, p + (key,))
                locations[p + (key,)] = f"{path}:{key_node.start_mark.line + 1}"
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, p + (i,)) for i, v in enumerate(n.value)]
        return scalar(n, p)

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
    if os.path.isdir(base_path):
        raise RecipeError([("base", f"{base_path} is a folder, not a recipe file",
                            locations[("base",)])])
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
        if len(stack) >= MAX_REFERENCE_CHAIN:
            if any("a chain of more than" in message for _, message, _ in problems):
                return None  # one such chain is named: the others repeat it
            problems.append((format_path(at), f"a chain of more than {MAX_REFERENCE_CHAIN} "
                             f"${{}} references (${{{stack[0]}}} -> ${{{stack[1]}}} -> ... -> "
                             f"${{{ref}}})", locations.get(at)))
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
