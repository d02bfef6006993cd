"""The crash-safe record log: ``log_dir/cockpit.jsonl``, one JSON object per completed record."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

LOG_NAME = "cockpit.jsonl"

__all__ = ["LOG_NAME", "LogWriter", "load_log"]


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays become Python numbers and lists.
    Non-finite floats are written as the tokens ``NaN``, ``Infinity``, ``-Infinity`` (read back by
    Python's ``json`` and by :func:`load_log`)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy / torch values
        return _jsonable(value.tolist())
    return value


class LogWriter:
    """Appends records to ``log_dir/cockpit.jsonl``, flushing and syncing each one at once."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.path = Path(log_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        line = json.dumps(_jsonable(record))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def drop_from(self, step: int) -> None:
        """Remove records with ``step >= step`` (used on resume, so no record is duplicated)."""
        if not self.path.exists():
            return
        kept = [r for r in load_log(self.path) if r.get("step", -1) < step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in kept:
                handle.write(json.dumps(_jsonable(record)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def load_log(path: str | os.PathLike) -> list[dict]:
    """Read the records of a log file (or of ``path/cockpit.jsonl`` for a folder), oldest first.

    A truncated last line (the process was killed while writing) is skipped with a warning; a
    malformed line elsewhere raises ``ValueError`` naming the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no cockpit log at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                warnings.warn(f"{path}: skipped a truncated last line", stacklevel=2)
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records
