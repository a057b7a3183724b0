"""Reading the files a user hands tfdeploy (data, checkpoints, configs): every way one can
be wrong — missing, a folder, empty, too large, not UTF-8, NUL bytes, not JSON, a field too
large — becomes one line naming the file (and line) and the cause, raised as the caller's
error class (a :class:`~tfdeploy.errors.TfdeployError`: exit 2, nothing written).
"""
import csv
import io
import json
import os

from tfdeploy.errors import DataError

TEXT_LIMIT = 1 << 30   # a text data file read whole; larger is not a data file we read
JSON_LIMIT = 64 << 20  # config and tokenizer JSON
FIELD_LIMIT = 1 << 20  # one CSV/TSV field (csv's own default, 128 KiB, cuts long documents)


def checked(path, what, error=DataError, limit=None):
    """``path`` when it is a readable, non-empty file of at most ``limit`` bytes."""
    where = f"{what} {path}"
    if not os.path.exists(path):
        raise error(f"{where}: no such file")
    if os.path.isdir(path):
        raise error(f"{where}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise error(f"{where}: not readable (permissions)")
    size = os.path.getsize(path)
    if size == 0:
        raise error(f"{where}: is empty")
    if limit and size > limit:
        raise error(f"{where}: {size:,} bytes, over the {limit:,} a file of this kind may "
                    f"have")
    return path


def read_bytes(path, what, error=DataError, limit=TEXT_LIMIT):
    checked(path, what, error, limit)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{what} {path}: cannot read it ({e.strerror or e})") from None


def decode(data, path, what, error=DataError):
    """``data`` as UTF-8 text (a byte-order mark is dropped), without NUL characters."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{what} {path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); "
                    f"save it as UTF-8") from None
    nul = text.find("\0")
    if nul >= 0:
        raise error(f"{what} {path}:{text.count(chr(10), 0, nul) + 1}: a NUL byte (a "
                    f"binary file?)")
    return text


def read_text(path, what, error=DataError, limit=TEXT_LIMIT):
    return decode(read_bytes(path, what, error, limit), path, what, error)


def read_json(path, what, error=DataError, limit=JSON_LIMIT):
    text = read_text(path, what, error, limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}:{e.lineno}: not JSON ({e.msg}, column "
                    f"{e.colno})") from None
    except RecursionError:
        raise error(f"{what} {path}: JSON nested too deeply") from None


def read_json_object(path, what, error=DataError, limit=JSON_LIMIT):
    value = read_json(path, what, error, limit)
    if not isinstance(value, dict):
        raise error(f"{what} {path}: expected a JSON object, found {type(value).__name__}")
    return value


def csv_rows(text, path, what, delimiter, quoting, error=DataError):
    """Yield (line number, fields) of ``text``; a malformed row names its line."""
    previous = csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise error(f"{what} {path}:{reader.line_num}: {e} (at most {FIELD_LIMIT:,} "
                            f"characters a field; an unclosed quote?)") from None
            yield reader.line_num, fields
    finally:
        csv.field_size_limit(previous)
