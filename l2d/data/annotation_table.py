"""Reading an annotation table: one annotation per row, as the field's datasets publish them.

A table is CSV (``.csv``, ``.tsv``), JSON lines (``.jsonl``) or JSON (``.json``): a list of row
objects, or a mapping ``{annotator: {item: label}}`` or ``{annotator: [row, ...]}``, read as
rows with the annotator, item and label in the columns ``--annotator-column``,
``--item-column`` and ``--label-column`` name. A JSON row whose value is a list of objects
(MiceBone's annotation sets: ``{"name": ..., "annotations": [{"image_path": ...,
"class_label": ...}, ...]}``) stands for one row per object, each with the outer row's other
values.
Every value is kept as text, so a class is given by its index or by its name alike. Rows are
numbered from 1, in file order, as the errors name them.
"""

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from l2d.errors import L2DError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
TABLE_SUFFIXES = (*CSV_SUFFIXES, ".jsonl", ".json")


@dataclass(frozen=True)
class Row:
    number: int  # 1-based, in file order.
    values: dict[str, str]

    def get(self, table: Path, column: str) -> str:
        """The row's value of ``column``; L2DError naming the row if it has none."""
        value = self.values.get(column)
        if value is None or value == "":
            raise L2DError(f"{table}: row {self.number}: no value in column {column!r}"
                           + (f" (columns: {', '.join(self.values)})"
                              if column not in self.values else ""))
        return value


def as_text(value) -> str | None:
    """A JSON value as a table cell: numbers as they read (3, not 3.0), null as None."""
    if value is None:
        return None
    if isinstance(value, bool):  # As JSON writes it, and as --where compares it.
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Columns:
    """The columns that name the item, the annotator and the label."""

    item: str
    annotator: str
    label: str


def read_table(path: Path, columns: Columns) -> list[Row]:
    """The rows of the table at ``path``; L2DError (one line) for a file that is none."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise L2DError(f"{path}: not an annotation table (expected {', '.join(TABLE_SUFFIXES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise L2DError(f"{path}: cannot read the table: {error}") from None
    if suffix in CSV_SUFFIXES:
        # newline="": a quoted field may hold a line break.
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=CSV_SUFFIXES[suffix])
        rows = [Row(i, {key: value for key, value in row.items() if key is not None})
                for i, row in enumerate(reader, 1)]
    elif suffix == ".jsonl":
        rows = [Row(i, json_row(path, i, line)) for i, line in
                enumerate((line for line in text.split("\n") if line.strip()), 1)]
    else:
        rows = json_rows(path, parse_json(path, text), columns)
    if not rows:
        raise L2DError(f"{path}: the table has no rows")
    return rows


def parse_json(path: Path, text: str, where: str = ""):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise L2DError(f"{path}: {where}invalid JSON at line {error.lineno} column "
                       f"{error.colno}: {error.msg}") from None


def json_row(path: Path, number: int, line: str) -> dict[str, str]:
    row = parse_json(path, line, f"row {number}: ")
    if not isinstance(row, dict):
        raise L2DError(f"{path}: row {number}: expected a JSON object, got "
                       f"{type(row).__name__}")
    return {key: as_text(value) for key, value in row.items()}


def json_rows(path: Path, data, columns: Columns) -> list[Row]:
    """Rows of a JSON list of objects, or of a mapping annotator -> {item: label} / [rows]."""
    if isinstance(data, list):
        objects = data
    elif isinstance(data, dict):
        objects = []
        for annotator, labelled in data.items():
            if isinstance(labelled, dict):
                objects += [{columns.annotator: annotator, columns.item: item,
                             columns.label: label} for item, label in labelled.items()]
            elif isinstance(labelled, list):
                objects += [{columns.annotator: annotator, **row} if isinstance(row, dict)
                            else row for row in labelled]
            else:
                raise L2DError(f"{path}: annotator {annotator!r}: expected an object "
                               "{item: label} or a list of rows")
    else:
        raise L2DError(f"{path}: expected a list of rows or an object of annotators")
    rows = []
    for row in objects:
        if not isinstance(row, dict):
            raise L2DError(f"{path}: row {len(rows) + 1}: expected a JSON object, got "
                           f"{type(row).__name__}")
        nested = [key for key, value in row.items() if isinstance(value, list)
                  and value and all(isinstance(inner, dict) for inner in value)]
        outer = {key: value for key, value in row.items() if key not in nested}
        for inner in ([{**outer, **inner} for key in nested for inner in row[key]]
                      if nested else [row]):
            rows.append(Row(len(rows) + 1, {key: as_text(value) for key, value in inner.items()
                                            if not isinstance(value, list | dict)}))
    return rows
