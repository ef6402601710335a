"""Dataset rows for the benchmark tasks: a local JSONL/JSON file or directory, or a hub id.

Local files are read here (not through ``datasets``) and every record is checked before any compute:
a bad record stops the run with the file, the line and what is wrong (bad JSON, not an object, a
missing field, a field the task's own check rejects, no records at all). A hub id goes through HF
``datasets`` (it cannot be checked offline; the task decides what to do with its odd rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from thinkflow.tasks.base import TaskError

RecordCheck = Callable[[dict], str | None]  # what is wrong with a record, or None


def local_file(task: str, source: str, split: str) -> Path | None:
    """The local file holding ``split`` of ``source``, or None when ``source`` is a hub id."""
    path = Path(source)
    if path.is_dir():
        file = path / f"{split}.jsonl"
        if not file.exists():
            raise TaskError(f"{task}: no {split}.jsonl in local dataset directory {path}")
        return file
    if path.suffix in (".json", ".jsonl") or "/" in source and path.parent.exists():
        if not path.exists():
            raise TaskError(f"{task}: dataset path {path} does not exist")
        return path
    return None


def load_rows(
    task: str,
    source: str,
    split: str,
    fields: tuple[str, ...],
    config_name: str | None = None,
    check: RecordCheck | None = None,
) -> list[dict]:
    """The rows of ``split``: checked records of a local file, or a hub dataset's rows."""
    if (file := local_file(task, source, split)) is not None:
        return read_records(task, file, fields, check)
    import datasets

    ds = (
        datasets.load_dataset(source, config_name, split=split)
        if config_name
        else datasets.load_dataset(source, split=split)
    )
    missing = set(fields) - set(ds.column_names)
    if missing:
        raise TaskError(f"{task}: dataset {source} lacks column(s) {sorted(missing)}")
    return list(ds)


def read_records(task: str, file: Path, fields: tuple[str, ...], check: RecordCheck | None = None) -> list[dict]:
    """Every record of a local file (JSON Lines, or a JSON array), each checked; a TaskError names the
    file, the line (or record) and what is wrong."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskError(f"{task} data: {file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if file.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array (datasets reads these too)
        records = _json(task, file, text)
        rows = [_checked(task, r, f"{file}, record {i}", fields, check) for i, r in enumerate(records, 1)]
    else:
        rows = []
        for lineno, line in enumerate(text.split("\n"), 1):  # JSON Lines: only \n ends a record
            if not line.strip():
                continue
            record = _json(task, file, line, lineno)
            rows.append(_checked(task, record, f"{file}, line {lineno}", fields, check))
    if not rows:
        raise TaskError(f"{task} data: {file}: empty split (no records)")
    return rows


def _json(task: str, file: Path, text: str, lineno: int | None = None):
    """``json.loads``; bad JSON names the file and the line (``lineno`` when ``text`` is one line of it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = err.lineno if lineno is None else lineno
        raise TaskError(f"{task} data: {file}, line {line}: bad JSON ({err.msg}, column {err.colno})") from None


def _checked(task: str, record, where: str, fields: tuple[str, ...], check: RecordCheck | None) -> dict:
    if not isinstance(record, dict):
        names = " and ".join(fields) if len(fields) <= 2 else ", ".join(fields)
        raise TaskError(f"{task} data: {where}: expected a JSON object with {names}, got {json.dumps(record)[:80]}")
    for key in fields:
        if key not in record:
            raise TaskError(f"{task} data: {where}: missing field {key!r} (has {sorted(record)})")
    problem = check(record) if check else None
    if problem:
        raise TaskError(f"{task} data: {where}: {problem}")
    return record
