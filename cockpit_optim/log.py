"""The crash-safe record log: ``log_dir/cockpit.jsonl``, one JSON object per completed record.

Ownership: a log belongs to one run.  A new writer whose ``log_dir`` already holds a log moves
that log to ``cockpit.<n>.jsonl`` (the next free ``n``: 1 is the oldest) with a warning, at its
first record, and starts a new ``cockpit.jsonl``; runs are never mixed in one file.  A resumed run
(:meth:`LogWriter.drop_from`, called by ``MonitoredOptimizer.load_state_dict``) instead keeps the
log, cut to the records before the restored step, and appends to it.

Writing never raises: a failed write (a full disk) warns once, the record stays in the
optimizer's ``history``, and the next record is tried again, starting on a new line.
"""

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


def _record(line: bytes | str) -> dict | None:
    """The record on one line: a JSON object with an integer ``step``, else ``None``."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(record, dict) and type(record.get("step")) is int:
        return record
    return None


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class LogWriter:
    """Appends records to ``log_dir/cockpit.jsonl``, each one written and synced at once.

    Attributes:
        path: the log file.
        moved_to: where an earlier run's log in ``log_dir`` was moved (``None`` if there was none).
        failed: number of records that could not be written (see the module docstring).
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.path = Path(log_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_to: Path | None = None
        self.failed = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file this run writes
        self._adopted = False  # drop_from made the existing log this run's
        self._check_end = True  # the file may end without a newline (inherited or cut short)
        self._warned = False

    def write(self, record: dict) -> None:
        """Append ``record`` as one line; an ``OSError`` is warned about (once), not raised."""
        line = (json.dumps(_jsonable(record)) + "\n").encode("utf-8")
        try:
            self._append(line)
        except OSError as error:
            self._failure(error, "the records that fail stay in the optimizer's history only")

    def drop_from(self, step: int) -> None:
        """Keep only the records with ``step`` below ``step`` (and no malformed line): the log as
        it was when the run now restored was at ``step``.  Later records are appended to it."""
        self._adopted, self._file, self._check_end = True, None, True
        if not self.path.exists():
            return
        lines = self.path.read_bytes().splitlines(keepends=True)
        records = [_record(line) for line in lines]
        keep = [r is not None and r["step"] < step for r in records]
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        kept = sum(keep)
        try:
            if all(keep[:kept]):  # the kept lines are a prefix: cut the rest off in place
                self._truncate(starts[kept])
            else:
                self._rewrite([line for line, k in zip(lines, keep) if k])
        except OSError as error:
            self._failure(error, "the log may hold records the resumed run writes again")

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                for line in lines:
                    handle.write(line if line.endswith(b"\n") else line + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_path(self.path.parent)

    def _target(self) -> Path:
        """The file this run appends to: its own (possibly moved by a later run), else
        ``path`` after moving an earlier run's log out of the way."""
        if self._file is not None:
            for candidate in (self.path, *self.path.parent.glob("cockpit.*.jsonl")):
                if _identity(candidate) == self._file:
                    return candidate
            self._file, self._adopted = None, False  # removed: this run starts a new log
        if not self._adopted and self.path.exists() and self.path.stat().st_size > 0:
            number = 1
            while (self.path.parent / f"cockpit.{number}.jsonl").exists():
                number += 1
            self.moved_to = self.path.parent / f"cockpit.{number}.jsonl"
            os.replace(self.path, self.moved_to)
            warnings.warn(
                f"{self.path} held the records of an earlier run: moved to {self.moved_to.name}; "
                f"this run writes a new {LOG_NAME} (to continue a log, restore the optimizer "
                "with load_state_dict)",
                stacklevel=4,
            )
        self._adopted, self._check_end = True, True
        return self.path

    def _append(self, line: bytes) -> None:
        target = self._target()
        with open(target, "ab", buffering=0) as handle:
            if self._check_end and handle.tell() > 0:
                with open(target, "rb") as reader:
                    reader.seek(-1, os.SEEK_END)
                    if reader.read(1) != b"\n":
                        line = b"\n" + line  # never glue a record onto a cut line
            self._file = _identity(target)
            self._check_end = True  # until this line is written completely
            view = memoryview(line)
            while view:
                view = view[handle.write(view) :]
            os.fsync(handle.fileno())
            self._check_end = False

    def _failure(self, error: OSError, consequence: str) -> None:
        self.failed += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"cannot write the cockpit log {self.path} ({error}): training continues, the "
                f"records written so far are kept, {consequence}",
                stacklevel=4,
            )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def load_log(path: str | os.PathLike, *, strict: bool = False) -> list[dict]:
    """Read the records of a log file (or of ``path/cockpit.jsonl`` for a folder), oldest first.

    A malformed line anywhere (cut short by a kill or a full disk, or not a JSON object with an
    integer ``step``) is skipped; one warning counts them.  ``strict=True`` raises ``ValueError``
    naming the first such line instead.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no cockpit log at {path}")
    records, malformed = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is not None:
            records.append(record)
        elif strict:
            raise ValueError(
                f"{path}:{number}: not a JSON record (an object with an integer 'step')"
            )
        else:
            malformed.append(number)
    if malformed:
        shown = ", ".join(map(str, malformed[:5])) + (", ..." if len(malformed) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(malformed)} malformed line(s) (truncated or not a JSON record) "
            f"at line(s) {shown}; load_log(..., strict=True) refuses such a log",
            stacklevel=2,
        )
    return records
