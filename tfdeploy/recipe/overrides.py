"""``--set PATH=VALUE`` overrides applied to the plain recipe tree before validation.

PATH uses dots, list indices and stage names: ``stages.1.final_sparsity`` or
``stages.prune.final_sparsity``. VALUE stays text until the field's type parses it, so
``--set name=123`` is the string "123" while ``--set data.max_length=64`` is an int.
"""
from tfdeploy.errors import RecipeError
from tfdeploy.recipe.validate import OverrideText, closest


def parse_override(text):
    if "=" not in text:
        raise RecipeError([("", f"--set {text!r}: expected PATH=VALUE", None)])
    path, value = text.split("=", 1)
    parts = [p for p in path.strip().split(".")]
    if not path.strip() or any(not p for p in parts):
        raise RecipeError([("", f"--set {text!r}: empty key in path", None)])
    return parts, value


def apply_overrides(tree, overrides, locations):
    for text in overrides:
        parts, value = parse_override(text)
        where = f"--set {text}"
        node, path = tree, ()
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part, path, where)
                path += (index,)
                if last:
                    node[index] = OverrideText(value)
                else:
                    node = node[index]
            elif isinstance(node, dict):
                path += (part,)
                if last:
                    node[part] = OverrideText(value)
                else:
                    # A missing mapping is created; the validator then names any unknown key.
                    child = node.get(part)
                    if child is None:
                        child = node[part] = {}
                    elif not isinstance(child, (dict, list)):
                        raise RecipeError([(_fmt(path), f"{_fmt(path)} is a value, not a "
                                                        f"section; cannot set "
                                                        f"{'.'.join(parts[i + 1:])}", where)])
                    node = child
            else:
                raise RecipeError([(_fmt(path), f"{_fmt(path)} is a value, not a section; "
                                                f"cannot set {'.'.join(parts[i:])}", where)])
        # The new value's location is the override, for everything below it too.
        for key in [k for k in locations if k[:len(path)] == path]:
            del locations[key]
        locations[path] = where
    return tree


def _list_index(items, part, path, where):
    if part.lstrip("-").isdigit():
        index = int(part)
        if not 0 <= index < len(items):
            raise RecipeError([(_fmt(path), f"index {index} is out of range "
                                            f"(there are {len(items)} entries)", where)])
        return index
    names = [_entry_name(item) for item in items]
    if part in names:
        return names.index(part)
    raise RecipeError([(_fmt(path), f"no entry named {part!r}{closest(part, names)}", where)])


def _entry_name(item):
    if isinstance(item, dict):
        return str(item.get("name") or item.get("type"))
    return None


def _fmt(path):
    from tfdeploy.recipe.validate import format_path
    return format_path(path)
