"""Turn a plain recipe tree (dicts, lists, scalars) into typed config dataclasses.

All problems are collected, each with its key path (``stages[1].final_sparsity``) and the
YAML location it came from, so one run reports everything that is wrong at once.
"""
import dataclasses
import difflib
import math
import re
import typing

import yaml

from tfdeploy.errors import RecipeError
from tfdeploy.recipe.fields import PluginConfig


class OverrideText(str):
    """A ``--set`` value kept as text until its field's type says how to parse it."""


def format_path(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def closest(word, options):
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def type_label(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_label(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_label(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


class Validator:
    def __init__(self, locations):
        self.locations = locations  # path tuple -> "file:line"
        self.problems = []

    def where(self, path):
        path = tuple(path)
        while path not in self.locations and path:
            path = path[:-1]
        return self.locations.get(path)

    def fail(self, path, message):
        self.problems.append((format_path(path), message, self.where(path)))
        return _INVALID

    # -- conversion by type ---------------------------------------------------------------
    def convert(self, tp, value, path, meta=None):
        if isinstance(value, OverrideText):
            value = self.parse_override(tp, value)
        origin = typing.get_origin(tp)
        if origin is typing.Union:
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            for option in options:
                trial = Validator(self.locations)
                result = trial.convert(option, value, path, meta)
                if not trial.problems:
                    return result
            if len(options) == 1:
                return self.convert(options[0], value, path, meta)
            return self.fail(path, f"{_show(value)} is not {type_label(tp)}")
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                return self.fail(path, f"{_show(value)} is not {type_label(tp)}"
                                       f"{closest(value, choices)}")
            return value
        if origin is list:
            if not isinstance(value, list):
                return self.fail(path, f"expected {type_label(tp)}, got {_show(value)}")
            (item_tp,) = typing.get_args(tp)
            if meta and meta.get("max_items") is not None and len(value) > meta["max_items"]:
                return self.fail(path, f"{len(value)} items; at most {meta['max_items']}")
            # a list field's bounds apply to each item
            return [self.convert(item_tp, v, path + (i,), meta) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                return self.fail(path, f"expected a mapping, got {_show(value)}")
            _, item_tp = typing.get_args(tp)
            return {str(k): self.convert(item_tp, v, path + (k,)) for k, v in value.items()}
        if isinstance(tp, type) and issubclass(tp, PluginConfig) and "registry" in vars(tp):
            return self.plugin(tp, value, path)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, path)
        return self.scalar(tp, value, path, meta or {})

    def parse_override(self, tp, text):
        base = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
        choices = [c for b in base if typing.get_origin(b) is typing.Literal
                   for c in typing.get_args(b)]
        if str(text) in choices:  # `--set export.int8_fallback=off`: YAML would say False
            return str(text)
        if str in base and text.lower() not in ("null", "none", "~"):
            return str(text)
        for number in (int, float):  # YAML 1.1 reads "3e-5" as text; Python does not
            if number in base:
                try:
                    return number(text)
                except ValueError:
                    pass
        try:
            return yaml.safe_load(str(text))
        except yaml.YAMLError:
            return str(text)

    def scalar(self, tp, value, path, meta):
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            try:
                value = float(value) if ok else value
            except OverflowError:
                return self.fail(path, "number too large")
            if ok and not math.isfinite(value):
                return self.fail(path, f"{value} is not a finite number")
        elif tp is str:
            ok = isinstance(value, str)
            if ok and len(value) > meta.get("max_length", 4096):
                return self.fail(path, f"{len(value)} characters; at most "
                                       f"{meta.get('max_length', 4096)}")
        elif tp is typing.Any:
            ok = True
        else:
            raise TypeError(f"schema uses unsupported type {tp!r} at {format_path(path)}")
        if not ok:
            return self.fail(path, f"expected {type_label(tp)}, got {_show(value)}")
        return self.bounds(value, path, meta)

    def bounds(self, value, path, meta):
        ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
        if isinstance(value, (int, float)) and any(b is not None for b in (ge, gt, le, lt)):
            bad = ((ge is not None and value < ge) or (gt is not None and value <= gt)
                   or (le is not None and value > le) or (lt is not None and value >= lt))
            if bad:
                lo = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else "(-inf")
                hi = f"{le}]" if le is not None else (f"{lt})" if lt is not None else "inf)")
                return self.fail(path, f"{_show(value)} is not in {lo}, {hi}")
        pattern = meta.get("pattern")
        if pattern and isinstance(value, str) and not re.fullmatch(pattern, value):
            return self.fail(path, f"{_show(value)} does not match {pattern}")
        return value

    def plugin(self, base, value, path):
        if not isinstance(value, dict):
            return self.fail(path, f"expected a mapping with a 'type' key, got {_show(value)}")
        registry = base.registry
        kind = value.get("type")
        if kind is not None and not isinstance(kind, str):
            return self.fail(path + ("type",), f"expected a type name, got {_show(kind)}; "
                                               f"one of {', '.join(registry.names())}")
        if kind is None:
            return self.fail(path + ("type",), f"required key missing; one of "
                                               f"{', '.join(registry.names())}")
        if kind not in registry:
            return self.fail(path + ("type",), f"unknown {registry.kind} type {_show(kind)}"
                                               f"{closest(kind, registry.names())}; known: "
                                               f"{', '.join(registry.names())}")
        return self.dataclass(registry.get(kind).Config, value, path)

    def dataclass(self, cls, value, path):
        if not isinstance(value, dict):
            return self.fail(path, f"expected a mapping, got {_show(value)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        bad = False
        for key in value:
            if key not in fields:
                bad = self.fail(path + (key,), f"unknown key{closest(key, fields)}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = self.convert(hints[name], value[name], path + (name,),
                                            dict(f.metadata))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                bad = self.fail(path + (name,), "required key missing")
        if bad or any(v is _INVALID for v in _flatten(kwargs)):
            return _INVALID  # problems already recorded; never build a half-valid object
        obj = cls(**kwargs)
        check = getattr(obj, "check", None)
        if check:
            for key, message in check():
                # key: a field name, a tuple path below this object, or None for the object.
                sub = key if isinstance(key, tuple) else ((key,) if key else ())
                self.fail(path + sub, message)
        return obj


class _Invalid:
    def __repr__(self):
        return "<invalid>"


_INVALID = _Invalid()


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def _show(value):
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value) if isinstance(value, str) else str(value)


def validate(cls, tree, locations):
    """Build ``cls`` from ``tree`` or raise RecipeError listing every problem."""
    validator = Validator(locations)
    result = validator.convert(cls, tree, ())
    if validator.problems:
        raise RecipeError(validator.problems)
    return result
