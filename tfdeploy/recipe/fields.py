"""Building blocks of the recipe schema: documented fields and plugin registries.

Every schema field carries its doc, unit and bounds in ``metadata``; the validator and the
JSON Schema generator read them from there, so a field is described in exactly one place.
"""
import dataclasses
from typing import ClassVar, Optional

MISSING = dataclasses.MISSING
# Recipe and stage names become folder names: no separators, no leading dot.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def field(default=MISSING, *, doc, unit=None, ge=None, gt=None, le=None, lt=None,
          pattern=None, factory=None, max_items=None, max_length=4096):
    """A dataclass field with documentation and bounds for validation: ge/gt/le/lt for
    numbers (each item of a list), max_items for lists, max_length for text."""
    meta = {"doc": doc, "unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern,
            "max_items": max_items, "max_length": max_length}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Registry:
    """Maps a plugin's ``type`` name (as written in a recipe) to its class.

    Each registered class has a ``Config`` dataclass; the recipe validator picks the Config by
    the ``type`` key, so adding a plugin is adding one module with one decorated class.
    """

    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name):
        def decorate(cls):
            if name in self._items:
                raise ValueError(f"{self.kind} type {name!r} registered twice")
            if not (dataclasses.is_dataclass(getattr(cls, "Config", None))):
                raise TypeError(f"{cls.__name__} needs a Config dataclass")
            cls.type_name = name
            cls.Config.type_name = name
            self._items[name] = cls
            return cls
        return decorate

    def get(self, name):
        return self._items[name]

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items


class PluginConfig:
    """Base for configs chosen by ``type``: the validator dispatches on ``registry``."""

    registry: ClassVar[Registry]
    type_name: ClassVar[str] = ""


@dataclasses.dataclass(kw_only=True)
class StageConfig(PluginConfig):
    """Fields every stage has. A stage's own Config subclasses this."""

    type: str = field(doc="Stage type, e.g. train, prune, cluster, qat, distill.")
    name: Optional[str] = field(None, doc="Name used by --stages/--from and in the run "
                                          "directory; defaults to the type (made unique).",
                                pattern=NAME_PATTERN, max_length=64)


@dataclasses.dataclass(kw_only=True)
class ModelConfig(PluginConfig):
    type: str = field(doc="Model type, e.g. bert.")


@dataclasses.dataclass(kw_only=True)
class DataConfig(PluginConfig):
    type: str = field(doc="Data source type, e.g. sst2, text.")
    max_train_examples: int = field(0, ge=0, doc="Use only N training rows (a seeded "
                                                 "sample); 0 = all.")
    max_validation_examples: int = field(0, ge=0, doc="Use only the first N validation "
                                                      "rows; 0 = all.")
    selection_split: float = field(
        0.05, ge=0, lt=0.5, doc="Share of the training rows held out (seeded) as the "
                                "selection split: keep_best, early stopping and the "
                                "evaluations during training choose on it, so the reported "
                                "validation split chooses nothing. 0 = none (then no "
                                "keep_best or early stopping).")


def import_submodules(package_name, package_path):
    """Import every module of a plugin package so their ``@register`` decorators run."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
