"""The readings of a step, from statistics to records: which instruments prepare before the
update, which read after it, which begin a reading that completes at the next step, and the
isolation of failures (an instrument that fails reads ``nan``; a step whose statistics fail
is skipped with a warning, never the update)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from .contract import Request, Statistics, flat_norm
from .engine.statistics import StatisticsEngine
from .errors import ReadingWarning
from .instruments import Instrument
from .pipeline import OpenRecord, RecordPipeline


class StepReadings:
    """Turns each tracked step's statistics into an :class:`OpenRecord` and finishes it through
    ``records`` once every reading is in (one host read per step, :meth:`read`)."""

    def __init__(
        self,
        instruments: list[Instrument],
        engine: StatisticsEngine,
        records: RecordPipeline,
        names: list[str],
        params: list[Tensor],
        lr: Callable[[], float],
        controllers: Callable[[], bool],
        request: Request,
    ) -> None:
        self.instruments, self.engine, self.records = instruments, engine, records
        self.names, self.params, self.lr, self.controllers = names, params, lr, controllers
        self.request = request  # the union at construction: what may be asked for
        self.open: OpenRecord | None = None  # the record waiting for a later step
        self.theta0: list[Tensor] | None = None
        self.read_at = -1  # the step of the last host read

    @staticmethod
    def _union(
        instruments: Iterable[Instrument],
        ask: Callable[[Instrument], Request | None],
        failed: dict[str, str],
    ) -> Request:
        """The union of ``ask(instrument)``; an instrument that fails to say is noted in
        ``failed`` (its reading is lost, the others are not)."""
        requests = []
        for instrument in instruments:
            try:
                requests.append(ask(instrument) or Request())
            except Exception as error:
                failed[instrument.name] = repr(error)
        return Request.union(requests)

    def close(self) -> None:
        """Finish a record still waiting for a later step: those readings are ``nan``."""
        self.engine.transfer.read()
        if self.open is not None:
            record, self.open = self.open, None
            for instrument in record.waiting:
                instrument.abandon()
                record.values[instrument.name] = math.nan
            self.records.finish(record)

    def skip(self, t: int, error: Exception, record: OpenRecord | None = None) -> None:
        """Warn that step ``t``'s readings failed; drop ``record`` (and the record waiting for a
        later step: all of them without a record, else only the record's own)."""
        warnings.warn(
            f"readings of step {t} failed and are skipped: {error!r}", ReadingWarning, stacklevel=3
        )
        if record is not None:
            record.failed = True
        if self.open is not None and (record is None or self.open is record):
            for instrument in self.open.waiting:
                instrument.abandon()
            self.open = None

    def read(self, step: int) -> None:
        """The step's host read: resolves every queued value and runs what waited for them."""
        self.read_at = step
        self.engine.transfer.read()

    def then(self, record: OpenRecord, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the next read; a failure skips ``record`` only."""

        def guarded() -> None:
            try:
                callback()
            except Exception as error:
                self.skip(record.step, error, record)

        self.engine.transfer.then(guarded)

    def before_update(self, t: int, tracked: bool) -> tuple[OpenRecord | None, Statistics | None]:
        completing = self.open
        if not tracked and completing is None:
            return None, None
        failed: dict[str, str] = {}  # this step's readings that failed
        unfinished: dict[str, str] = {}  # waiting readings that failed
        request = Request()
        if tracked:
            request = self._union(self.instruments, lambda i: i.request(), failed)
        if completing is not None:
            request = request | self._union(completing.waiting, lambda i: i.pending(), unfinished)
        stats = self.engine.collect(request, self.lr(), step=t)
        record = None
        if tracked:
            if self.request.distance:
                distance = flat_norm(p - p0 for p, p0 in zip(self.params, self.theta0))
                stats.distance = self.engine.transfer.defer(distance)
            for instrument in self.instruments:
                if instrument.name in failed:
                    continue
                if not (instrument.after_update or instrument.completes_later):
                    try:
                        instrument.prepare(stats)
                    except Exception as error:  # only this instrument's reading is lost
                        failed[instrument.name] = repr(error)
        if completing is not None:
            self._complete(completing, stats, unfinished)
        if tracked:
            record = OpenRecord({"step": t}, errors=failed)
            self.then(record, lambda: self._fill(record, stats))
        if completing is not None and self.controllers():
            self.read(t)  # controllers act on the completed record before this update
        return record, stats

    def _fill(self, record: OpenRecord, stats: Statistics) -> None:
        """Read the instruments computed before the update into ``record`` (after the read)."""
        stats.lr = self.lr()  # a controller may have changed it before this update
        record.values["lr"] = stats.lr
        if self.engine.approximate:
            record.values["approximate"] = True
        if stats.batch_size:
            record.values["batch_size"] = stats.batch_size
        stats.resolve()
        for instrument in self.instruments:
            if not (instrument.after_update or instrument.completes_later):
                error = record.errors.get(instrument.name)
                self._take(instrument, record, error, instrument.read, stats)

    def _take(
        self,
        instrument: Instrument,
        record: OpenRecord,
        failure: str | None,
        read: Callable[..., Any],
        *args: Any,
    ) -> None:
        """``record[instrument.name] = read(*args)`` (with the instrument's extras); an
        instrument that fails reads ``nan`` (with a warning naming the cause) and the rest of
        the record stays."""
        if failure is None:
            try:
                record.values[instrument.name] = read(*args)
                if args:
                    record.values.update(instrument.extras(*args))
                return
            except Exception as error:
                failure = repr(error)
        record.values[instrument.name] = math.nan
        warnings.warn(
            f"{instrument.name} of step {record.step} failed and reads nan: {failure}",
            ReadingWarning,
            stacklevel=2,
        )

    def after_update(
        self, record: OpenRecord, stats: Statistics, before: list[Tensor] | None
    ) -> None:
        """After-update instruments, and readings that complete at the next step begun."""
        after = Statistics(
            batch_size=stats.batch_size,
            names=self.names,
            lr=stats.lr,
            losses=stats.losses,
            transfer=self.engine.transfer,
            project=stats.project,
        )
        if before is not None:
            after.update = [p.detach() - b for p, b in zip(self.params, before)]
        else:
            after.unavailable["update"] = "no instrument asked for the update"
        failed = record.errors
        for instrument in self.instruments:
            if instrument.name in failed:
                continue
            try:
                if instrument.after_update:
                    instrument.prepare(after)
                elif instrument.completes_later:
                    instrument.begin(after)
                    record.waiting.append(instrument)
            except Exception as error:
                failed[instrument.name] = repr(error)
        after.update = None  # parameter-sized; its size is queued
        if record.waiting:
            self.open = record

        def conclude() -> None:
            after.resolve()
            for instrument in self.instruments:
                if instrument.after_update:
                    self._take(
                        instrument, record, failed.get(instrument.name), instrument.read, after
                    )
                elif instrument.completes_later and instrument.name in failed:
                    self._take(instrument, record, failed[instrument.name], instrument.read)
            if not record.waiting:
                self.records.finish(record)

        self.then(record, conclude)

    def _complete(self, record: OpenRecord, stats: Statistics, failed: dict[str, str]) -> None:
        """Queue the completion of ``record``'s waiting readings on this step's statistics (those
        in ``failed`` read ``nan``); the record is finished after the read."""
        self.open = None
        for instrument in record.waiting:
            if instrument.name in failed:
                instrument.abandon()
                continue
            try:
                instrument.complete(stats)
            except Exception as error:
                instrument.abandon()
                failed[instrument.name] = repr(error)

        def conclude() -> None:
            for instrument in record.waiting:
                self._take(instrument, record, failed.get(instrument.name), instrument.read_pending)
            record.waiting = []
            self.records.finish(record)

        self.then(record, conclude)
