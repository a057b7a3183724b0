"""Read labelled text from CSV, TSV or JSONL, naming file and row on any bad input."""
import csv
import json
import os

from tfdeploy import files
from tfdeploy.errors import DataError


def detect_format(path, fmt="auto"):
    if fmt != "auto":
        return fmt
    ext = os.path.splitext(path)[1].lower()
    formats = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
    if ext not in formats:
        raise DataError(f"{path}: cannot tell the format from the extension {ext!r}; "
                        f"set format: csv, tsv or jsonl")
    return formats[ext]


def read_rows(path, fmt):
    """Yield (line number, dict) per data row."""
    text = files.read_text(path, "data file")
    if fmt == "jsonl":
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: invalid JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{number}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line")
            yield number, row
        return
    # GLUE's TSVs are unquoted: a quote character is part of the sentence.
    rows = files.csv_rows(text, path, "data file", "\t" if fmt == "tsv" else ",",
                          csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in header[1]]
    for number, fields in rows:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} fields "
                            f"({', '.join(header)}), found {len(fields)}")
        yield number, dict(zip(header, fields))


def read_labelled(path, fmt, text_column, label_column):
    """(texts, raw label strings, line numbers) from a table file."""
    fmt = detect_format(path, fmt)
    texts, labels, lines = [], [], []
    for number, row in read_rows(path, fmt):
        for column in (text_column, label_column):
            if column not in row:
                raise DataError(f"{path}:{number}: no column {column!r} "
                                f"(columns: {', '.join(map(str, row))})")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{number}: empty or non-text {text_column!r}")
        texts.append(text.strip())
        labels.append(str(row[label_column]).strip())
        lines.append(number)
    if not texts:
        raise DataError(f"{path}: no data rows")
    return texts, labels, lines


def label_ids(path, labels, lines, label_map):
    """Map raw labels to ids by position in ``label_map``; name the row of an unknown one."""
    index = {name: i for i, name in enumerate(label_map)}
    out = []
    for label, line in zip(labels, lines):
        if label not in index:
            raise DataError(f"{path}:{line}: unknown label {label!r} "
                            f"(expected one of {', '.join(label_map)})")
        out.append(index[label])
    return out
