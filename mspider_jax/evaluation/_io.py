"""Small CSV and file helpers of the evaluation package (plain csv module, no pandas).

Readers keep the 1-based line number of every row so that errors can name the offending line.
Writers are atomic: they write a temporary file in the target directory and rename it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Reads a CSV with a header.

    Returns:
      (header, rows) where rows are (line_number, {column: text}); line 1 is the header.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file (a header line is needed)") from None
        if len(set(header)) != len(header):
            raise ValueError(f"{path}: duplicate column names in header {header}")
        rows = []
        for line_number, fields in enumerate(reader, start=2):
            if not fields or all(not field.strip() for field in fields):
                continue  # blank line
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line_number}: {len(fields)} fields, the header has "
                                 f"{len(header)}")
            rows.append((line_number, {name: field.strip() for name, field in zip(header, fields)}))
    return header, rows


def find_column(header: Sequence[str], name: str, path: str | os.PathLike) -> str:
    """The header entry equal to `name` ignoring case (the release writes `Dataset`, `Model`)."""
    matches = [column for column in header if column.lower() == name.lower()]
    if not matches:
        raise ValueError(f"{path}: no column {name!r} in header {list(header)}")
    if len(matches) > 1:
        raise ValueError(f"{path}: columns {matches} all match {name!r}")
    return matches[0]


def parse_float(text: str, where: str) -> float:
    """A finite float, or ValueError naming `where` (e.g. "scores.csv:12 column LogME")."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: value {text!r} is not finite (NaN/inf are not allowed; "
                         "leave the model out of both files instead)")
    return value


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Calls `write(tmp_path)` and renames the result to `path` (no half-written files)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)  # mkstemp creates 0600; give the final file the usual umask permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_npz_atomic(path: str | os.PathLike, arrays: dict) -> pathlib.Path:
    """`np.savez` of `arrays` to `path`, atomically (temp file + rename)."""
    import numpy as np

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)

    return write_atomic(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return write_atomic(path, write)


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str],
                     rows: Sequence[Sequence[object]]) -> pathlib.Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())
