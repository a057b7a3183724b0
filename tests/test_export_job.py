"""ExportJob directly: where each format's artifact goes, and what formats share is made
once; an artifact's runtime comes from its format, or from the file for an unknown one."""
import types

import pytest

from tfdeploy import export
from tfdeploy.export.job import ExportJob


def job(tmp_path):
    recipe = types.SimpleNamespace(name="mine")
    context = types.SimpleNamespace(run_dir=str(tmp_path))
    return ExportJob(recipe, context, model=None, folder=str(tmp_path / "artifacts"))


def test_paths_follow_the_format(tmp_path):
    j = job(tmp_path)
    assert j.path("savedmodel") == str(tmp_path / "artifacts" / "savedmodel")
    assert j.path("tflite_int8") == str(tmp_path / "artifacts" / "mine.tflite_int8.tflite")
    assert j.path("onnx_fp32") == str(tmp_path / "artifacts" / "mine.onnx_fp32.onnx")


def test_what_formats_share_is_made_once(tmp_path):
    j, made = job(tmp_path), []
    for _ in range(3):
        assert j.once("float", lambda: made.append(1) or "file") == "file"
    assert made == [1]


def test_runtime_from_the_format_or_the_file(tmp_path):
    assert export.Artifact("tflite_int16x8", "x").runtime == "litert"
    assert export.Artifact("onnx_int8", "x").runtime == "onnxruntime"
    tflite = tmp_path / "a.bin"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))  # a flatbuffer's identifier
    assert export.Artifact("renamed", str(tflite)).runtime == "litert"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert export.Artifact("renamed", str(tmp_path / "sm")).runtime == "tf"
    other = tmp_path / "notes.txt"
    other.write_text("not a model")
    with pytest.raises(ValueError, match="no runtime opens it"):
        export.runner_for(str(other))
