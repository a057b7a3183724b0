"""JSON Schema of the recipe, generated from the dataclasses, for editor completion."""
import dataclasses
import typing

from tfdeploy.recipe.fields import PluginConfig


def schema_for(tp, meta=None):
    meta = meta or {}
    out = {}
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        out = {"anyOf": [schema_for(a) for a in args]}
    elif origin is typing.Literal:
        out = {"enum": list(typing.get_args(tp))}
    elif origin is list:
        out = {"type": "array", "items": schema_for(typing.get_args(tp)[0])}
    elif origin is dict:
        out = {"type": "object", "additionalProperties": schema_for(typing.get_args(tp)[1])}
    elif tp is typing.Any:
        out = {}
    elif tp is type(None):
        out = {"type": "null"}
    elif isinstance(tp, type) and issubclass(tp, PluginConfig) and "registry" in vars(tp):
        out = {"oneOf": [dataclass_schema(tp.registry.get(n).Config, n)
                         for n in tp.registry.names()]}
    elif dataclasses.is_dataclass(tp):
        out = dataclass_schema(tp)
    else:
        out = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[tp]}
    for key, name in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"),
                      ("lt", "exclusiveMaximum"), ("pattern", "pattern")):
        if meta.get(key) is not None:
            out[name] = meta[key]
    if meta.get("doc"):
        out["description"] = meta["doc"] + (f" Unit: {meta['unit']}." if meta.get("unit") else "")
    return out


def dataclass_schema(cls, type_name=None):
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        prop = schema_for(hints[f.name], dict(f.metadata))
        if f.default is not dataclasses.MISSING and _jsonable(f.default):
            prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if _jsonable(default):
                prop["default"] = default
        else:
            required.append(f.name)
        props[f.name] = prop
    if type_name:
        props["type"] = {"const": type_name}
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _jsonable(value):
    return value is None or isinstance(value, (str, int, float, bool, list))


def recipe_schema():
    from tfdeploy.recipe.schema import Recipe

    schema = dataclass_schema(Recipe)
    schema["properties"]["base"] = {"type": "string",
                                    "description": "Another recipe this one extends."}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tfdeploy recipe"
    return schema
