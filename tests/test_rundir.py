"""Atomic writes, hashing and the stage registry."""
import dataclasses
import os

import pytest

from tfdeploy.recipe.fields import Registry
from tfdeploy.rundir import atomic_dir, atomic_write_text, fingerprint
from tfdeploy.stages import STAGES, Stage


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(str(path), "one")
    atomic_write_text(str(path), "two")
    assert path.read_text() == "two"
    assert [p for p in os.listdir(path.parent) if p.startswith(".tmp")] == []


def test_atomic_dir_keeps_old_contents_on_failure(tmp_path):
    target = tmp_path / "artifact"
    with atomic_dir(str(target)) as tmp:
        open(os.path.join(tmp, "a"), "w").write("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(str(target)) as tmp:
            open(os.path.join(tmp, "a"), "w").write("half")
            raise RuntimeError("killed mid-write")
    assert (target / "a").read_text() == "good"
    assert sorted(os.listdir(tmp_path)) == ["artifact"]  # no temp dir left behind


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint({"lr": 1e-4, "epochs": 1}, "upstream")
    assert a == fingerprint({"epochs": 1, "lr": 1e-4}, "upstream")  # key order irrelevant
    assert a != fingerprint({"lr": 2e-4, "epochs": 1}, "upstream")
    assert a != fingerprint({"lr": 1e-4, "epochs": 1}, "other upstream")


def test_registry_rejects_duplicates_and_configless():
    registry = Registry("thing")

    @registry.register("a")
    class A:
        @dataclasses.dataclass
        class Config:
            x: int = 1

    assert registry.get("a") is A and "a" in registry and A.type_name == "a"
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(A)
    with pytest.raises(TypeError, match="Config dataclass"):
        registry.register("b")(type("B", (), {}))


def test_builtin_stages_registered():
    assert "train" in STAGES.names()
    assert issubclass(STAGES.get("train"), Stage)
