"""Every package tfdeploy imports is declared in setup.cfg: a package that is only installed
on the developer's machine would hide a missing dependency (CI's fresh virtualenv is the
other guard)."""
import ast
import configparser
import importlib.metadata as md
import os
import re
import sys

from conftest import ROOT

# Needed at run time although no tfdeploy module imports them by name.
INDIRECT = {"sympy": "ONNX Runtime's transformer optimizer (symbolic shape inference); "
                     "onnxruntime 1.32 no longer installs it"}


def declared():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    names = set()
    for line in cfg["options"]["install_requires"].splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonical(re.split(r"[<>=!~\[; ]", line)[0]))
    return names


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level():
    found = {}
    package = os.path.join(ROOT, "tfdeploy")
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        tops = [a.name.split(".")[0] for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        tops = [node.module.split(".")[0]]
                    else:
                        continue
                    for top in tops:
                        found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def test_every_import_is_declared():
    dists = md.packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_top_level().items()):
        if module in sys.stdlib_module_names or module == "tfdeploy":
            continue
        owners = {canonical(d) for d in dists.get(module, [])}
        if not owners:
            missing.append(f"{module} (imported in {where}) is not installed")
        elif not owners & wanted:
            missing.append(f"{module} (imported in {where}) comes from {sorted(owners)}, "
                           f"which setup.cfg does not declare")
    assert not missing, "\n".join(missing)


def test_indirect_dependencies_are_declared_and_installed():
    for name, why in INDIRECT.items():
        assert canonical(name) in declared(), f"setup.cfg must declare {name}: {why}"
        md.version(name)  # raises PackageNotFoundError when it is not installed
