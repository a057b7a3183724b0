"""File-corruption fuzzer: the recipe is right, the files it names are wrong. For every data
source and model type, seeded corruptions of each file it reads (missing, a folder, empty,
not UTF-8, NUL bytes, truncated, garbage, a field too large, not JSON, JSON of the wrong
shape); each must end in exit 2 with one ``error:`` line naming the file, no traceback,
nothing written. The server's config files the same way (a clear startup error)."""
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfdeploy.data.fashion_mnist import FashionMNIST, read_idx
from tfdeploy.run import execute

from conftest import ROOT

TEXT = ("missing", "folder", "empty", "not_utf8", "not_utf8", "nul", "nul", "truncated",
        "truncated")
TABLE = TEXT + ("huge_field",)
BINARY = ("missing", "folder", "empty", "garbage", "garbage", "truncated", "truncated")
JSON = ("missing", "folder", "empty", "not_utf8", "nul", "not_json", "not_json", "wrong_type")


def corrupt(path, kind, rng):
    """Write corruption ``kind`` over ``path`` (which holds a good file)."""
    data = open(path, "rb").read()
    os.remove(path)
    if kind == "missing":
        return
    if kind == "folder":
        os.makedirs(path)
        return
    if kind == "truncated":  # inside a line, never just after a newline
        cut = rng.randrange(len(data) // 10, len(data) - 2)
        while data[cut - 1:cut] in (b"\n", b"\r") or data[cut:cut + 1] in (b"\n", b"\r"):
            cut -= 1
        data = data[:cut]
    elif kind == "empty":
        data = b""
    elif kind in ("not_utf8", "nul"):
        at = rng.randrange(0, len(data))
        data = data[:at] + (b"\xff\xfe" if kind == "not_utf8" else b"\x00") + data[at:]
    elif kind == "garbage":
        data = bytes(rng.randrange(256) for _ in range(max(64, len(data) // 50)))
    elif kind == "huge_field":
        header, _, rest = data.partition(b"\n")
        sep = b"\t" if b"\t" in header else b","
        width = header.count(sep)
        data = header + b"\n" + b"x" * (2 << 20) + (sep + b"0") * width + b"\n" + rest
    elif kind == "not_json":
        data = data[:len(data) // 2] if data.strip().startswith(b"{") else b'{"a": '
    elif kind == "wrong_type":
        data = b"[1, 2, 3]"
    elif kind == "bad_magic":
        data = b"\x01" + data[1:]
    with open(path, "wb") as f:
        f.write(data)


def restore(path, good):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    with open(path, "wb") as f:
        f.write(good)


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_bert_dir, sst2_dir):
    """Small real files of every kind and a recipe reading each: {recipe name: (recipe
    path, [(file, corruption kinds)])}."""
    tmp = tmp_path_factory.mktemp("files")
    recipes = {}

    def recipe(name, model, data, files, extra=""):
        path = tmp / f"{name}.yaml"
        path.write_text(f"name: {name}\nmodel: {model}\ndata: {data}\n"
                        f"output: {{tensorboard: false}}\n{extra}")
        recipes[name] = (path, files)

    bert = tmp / "bert"
    shutil.copytree(small_bert_dir, bert)
    (bert / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    model = f"{{type: bert, checkpoint: {bert}, layers: null}}"

    sst2 = tmp / "sst2"
    sst2.mkdir()
    rows = {}
    for name, count in (("train.tsv", 300), ("dev.tsv", 80)):
        lines = open(os.path.join(sst2_dir, name), encoding="utf-8").read().split("\n")
        rows[name] = [l.split("\t") for l in lines[1:count + 1]]
        (sst2 / name).write_text("\n".join(lines[:count + 1]) + "\n", encoding="utf-8")
    recipe("sst2", model, f"{{type: sst2, dir: {sst2}, download: false}}",
           [(sst2 / "train.tsv", TABLE), (sst2 / "dev.tsv", TABLE)])
    recipe("ckpt", model, f"{{type: sst2, dir: {sst2}, download: false}}",
           [(bert / "config.json", JSON), (bert / "tokenizer_config.json", JSON[1:]),
            (bert / "vocab.txt", TEXT), (bert / "model.safetensors", BINARY)])

    text = tmp / "text"
    text.mkdir()
    (text / "train.csv").write_text("text,label\n" + "".join(
        f'"{s.replace(chr(34), "")}",{y}\n' for s, y in rows["train.tsv"]), encoding="utf-8")
    (text / "val.jsonl").write_text("".join(
        json.dumps({"text": s, "label": y}) + "\n" for s, y in rows["dev.tsv"]),
        encoding="utf-8")
    recipe("text", model, f"{{type: text, train: {text / 'train.csv'}, validation: "
                          f"{text / 'val.jsonl'}}}",
           [(text / "train.csv", TABLE), (text / "val.jsonl", TEXT)])

    fashion = tmp / "fashion"
    fashion.mkdir()
    source = FashionMNIST(FashionMNIST.Config(type="fashion_mnist")).find()
    for name, count in (("train", 400), ("t10k", 100)):
        for part, dims in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
            array = read_idx(os.path.join(source, f"{name}-{part}"))[:count]
            header = bytes([0, 0, 8, dims]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            (fashion / f"{name}-{part}").write_bytes(header + array.tobytes())
    idx = [(fashion / f"{n}-{p}", BINARY + ("bad_magic",))
           for n in ("train", "t10k") for p in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    recipe("fashion", "{type: cnn}", f"{{type: fashion_mnist, dir: {fashion}}}", idx)

    images = tmp / "images"
    import tensorflow as tf

    x = read_idx(os.path.join(fashion, "t10k-images-idx3-ubyte"))
    for split in ("train", "val"):
        for label in ("a", "b"):
            (images / split / label).mkdir(parents=True)
            for i in range(4):
                png = tf.io.encode_png(x[i, :, :, None]).numpy()
                (images / split / label / f"{i}.png").write_bytes(png)
    recipe("images", "{type: cnn}", f"{{type: images, train: {images / 'train'}, "
                                    f"validation: {images / 'val'}, image_size: [28, 28], "
                                    f"color_mode: grayscale}}",
           [(images / "train" / "a" / "0.png", BINARY[1:]),
            (images / "val" / "b" / "3.png", BINARY[1:])])

    arrays = tmp / "arrays"
    arrays.mkdir()
    for split in ("train", "val"):
        np.savez(arrays / f"{split}.npz", images=(x[:50, ..., None] / 255.).astype("float32"),
                 labels=np.arange(50) % 10)
    import keras

    keras3_model = keras.Sequential([keras.Input((28, 28, 1), name="images"),
                                     keras.layers.Flatten(), keras.layers.Dense(10)])
    keras3_model.save(arrays / "model.keras")
    import tf_keras

    tf_keras.Sequential([tf_keras.Input((28, 28, 1)), tf_keras.layers.Flatten(),
                         tf_keras.layers.Dense(10)]).save(arrays / "model.h5")
    npz = f"{{type: numpy, train: {arrays / 'train.npz'}, validation: {arrays / 'val.npz'}, " \
          f"x: images, y: labels}}"
    recipe("numpy", f"{{type: keras, path: {arrays / 'model.keras'}}}", npz,
           [(arrays / "train.npz", BINARY), (arrays / "val.npz", BINARY),
            (arrays / "model.keras", BINARY)])
    recipe("h5", f"{{type: keras, path: {arrays / 'model.h5'}}}", npz,
           [(arrays / "model.h5", BINARY)])
    (arrays / "rules.json").write_text(json.dumps([{
        "regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize"}]))
    recipe("quantizer", f"{{type: keras, path: {arrays / 'model.h5'}}}", npz,
           [(arrays / "rules.json", JSON)],
           f"export: {{formats: [tflite_recipe], quantizer_recipe: {arrays / 'rules.json'}}}\n")

    from tfdeploy.data.movielens import FILES, MovieLens

    movies = tmp / "ml"
    movies.mkdir()
    real = MovieLens(MovieLens.Config(type="movielens")).folder()
    for name in FILES:
        lines = open(os.path.join(real, name), encoding="utf-8").read().split("\n")
        (movies / name).write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    recipe("movielens", "{type: ranker}", f"{{type: movielens, dir: {movies}}}",
           [(movies / name, TEXT[:7]) for name in FILES])  # a cut last field still parses

    base = tmp / "base.yaml"
    base.write_text(recipes["sst2"][0].read_text().replace("name: sst2", "name: based"))
    recipe("based", model, f"{{type: sst2, dir: {sst2}, download: false}}",
           [(base, TEXT[:7])], "")
    recipes["based"][0].write_text(f"base: {base}\nname: based\n")
    return tmp, recipes


def cases(recipes, seed=0):
    rng = random.Random(seed)
    return [(name, path, kind, rng.randrange(1 << 30))
            for name, (_, files) in sorted(recipes.items())
            for path, kinds in files for kind in kinds]


def test_every_corrupt_file_is_one_line_naming_it(world, capsys):
    tmp, recipes = world
    all_cases = cases(recipes)
    assert len(all_cases) >= 150, len(all_cases)
    out_dir = tmp / "runs"
    failures = []
    for name, path, kind, seed in all_cases:
        good = open(path, "rb").read()
        corrupt(path, kind, random.Random(seed))
        try:
            code = execute(str(recipes[name][0]), (), dry_run=True, output_dir=str(out_dir))
            err = capsys.readouterr().err
        except BaseException as e:  # noqa: BLE001  (a crash is what this test looks for)
            code, err = None, f"raised {type(e).__name__}: {e}"
        finally:
            restore(path, good)
        lines = [l for l in err.splitlines() if l.startswith("error:")]
        case = f"{name}: {path.name} {kind}"
        if code != 2 or len(lines) != 1 or "Traceback" in err:
            failures.append(f"{case}: exit {code}: {err[-300:]!r}")
        elif path.name not in lines[0]:
            failures.append(f"{case}: the message does not name the file: {lines[0][:300]}")
        if out_dir.exists():
            failures.append(f"{case}: wrote {out_dir}")
            shutil.rmtree(out_dir)
    print(f"file fuzzer: {len(all_cases)} cases, {len(all_cases) - len(failures)} clean")
    assert not failures, "\n".join(failures)


SERVE_CONFIGS = {
    "batching.txt": ("batching_parameters_file", "max_batch_size { value: 8 }\n"),
    "models.config": ("model_config_file", "model_config_list { config { name: 'm' "
                                           "base_path: '/nonexistent' model_platform: "
                                           "'tensorflow' } }\n"),
}


def test_every_corrupt_server_config_is_one_line(tmp_path):
    from tfdeploy.serve.config import read_batching, read_models_config

    readers = {"batching.txt": read_batching, "models.config": read_models_config}
    rng, failures, count = random.Random(1), [], 0
    for name, (flag, text) in SERVE_CONFIGS.items():
        path = tmp_path / name
        for kind in TEXT + ("garbage", "not_proto"):
            path.write_text(text)
            if kind == "not_proto":
                path.write_text("this is { not a proto")
            else:
                corrupt(path, kind, rng)
            count += 1
            try:
                readers[name](str(path))
                failures.append(f"{name} {kind}: accepted")
            except ValueError as e:
                if "\n" in str(e) or name not in str(e) or flag not in str(e):
                    failures.append(f"{name} {kind}: {str(e)[:300]!r}")
            except Exception as e:  # noqa: BLE001
                failures.append(f"{name} {kind}: raised {type(e).__name__}: {e}"[:300])
            if path.is_dir():
                shutil.rmtree(path)
    assert count >= 20 and not failures, "\n".join(failures)
    path = tmp_path / "batching.txt"
    path.write_bytes(b"max_batch_size {\xff value: 8 }")
    proc = subprocess.run([sys.executable, "-m", "tfdeploy.serve", "--model_name=m",
                           f"--model_base_path={tmp_path}", "--enable_batching",
                           f"--batching_parameters_file={path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "batching.txt" in line and "UTF-8" in line, line


def test_a_long_reference_chain_and_a_model_fed_the_wrong_data(world, capsys):
    tmp, recipes = world
    chain = tmp / "chain.yaml"
    chain.write_text(recipes["sst2"][0].read_text() + "".join(
        f"v{i}: ${{v{i + 1}}}\n" for i in range(1200)) + "v1200: 1\n")
    assert execute(str(chain), (), dry_run=True) == 2
    err = capsys.readouterr().err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert "a chain of more than 64 ${} references" in line and "Traceback" not in err, line
    text_for_images = tmp / "cnn_text.yaml"
    text_for_images.write_text(f"name: cnn_text\nmodel: {{type: cnn}}\n"
                               f"data: {{type: sst2, dir: {tmp / 'sst2'}, download: false}}\n")
    assert execute(str(text_for_images), (), dry_run=True) == 2
    err = capsys.readouterr().err
    assert "model type cnn takes arrays or images, but data type sst2 gives text" in err, err
