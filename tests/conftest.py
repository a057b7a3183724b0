"""Shared test set-up. SST-2 is found through TFDEPLOY_DATA_DIR (default: ../shared/data
beside the repository, as in CI); tests that need it fail, never skip, when it is missing."""
import os
import subprocess
import sys

import tfdeploy  # noqa: F401  (pins Keras 2 before any test imports TensorFlow)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TFDEPLOY_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))


@pytest.fixture(scope="session")
def sst2_dir():
    path = os.path.join(os.environ["TFDEPLOY_DATA_DIR"], "sst2")
    assert os.path.exists(os.path.join(path, "dev.tsv")), (
        f"SST-2 not found in {path}; set TFDEPLOY_DATA_DIR to the folder holding sst2/")
    return path


def run_cli(*args, cwd=ROOT, timeout=600, env=None):
    """Run `python -m tfdeploy.run ...`; return the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "tfdeploy.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
