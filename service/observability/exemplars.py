"""Exemplars across worker processes: the latest sampled trace id per series and bucket.

An exemplar ties a sample to one call (`{trace_id="..."}`), so a dot on a latency or error
panel opens that call's trace and log lines. prometheus_client's multiprocess files hold
one float per series and its multiprocess values drop exemplars, so each process keeps
its own here: `exemplars_<pid>.bin` in the metrics directory, of fixed size, one slot per
series key (prometheus_client's own mmap key, so the collector matches them to its rows
without parsing), overwritten in place by the next sampled call. A scrape reads every
process's file and keeps, per key, the most recent. Dead workers' files are removed with
their other live files (multiproc.worker_exited): a recent exemplar is worth showing, an
old one is not, and the values themselves are archived.

Layout: a header (slots used, key bytes used), then SLOTS fixed records (trace id, value,
time, CRC-32 of the three), then the keys (length, UTF-8). A slot and its key are written
before the header counts them, so a reader never sees half an entry; a record being
overwritten while read fails its CRC and is skipped for that scrape.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import Counter, Histogram
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from service.observability.multiproc import EXEMPLARS_PREFIX, EXEMPLARS_SUFFIX
from service.small import PerProcess

PREFIX, SUFFIX = EXEMPLARS_PREFIX, EXEMPLARS_SUFFIX
SLOTS = 16384  # series and buckets per process; 300 scripts use about 6,000
KEY_BYTES = 4 << 20
_HEADER = struct.Struct("<II8x")
_DATA = struct.Struct("<32sdd")  # trace id (32 hex digits), value, unix time
_RECORD = struct.Struct("<32sddI4x")
_LENGTH = struct.Struct("<I")
_RECORDS_AT = _HEADER.size
_KEYS_AT = _RECORDS_AT + SLOTS * _RECORD.size
SIZE = _KEYS_AT + KEY_BYTES


def file_of(directory: Path, pid: int) -> Path:
    return directory / f"{PREFIX}{pid}{SUFFIX}"


def counter_key(counter: Counter, labelnames: Sequence[str], values: Sequence[str]) -> str:
    """The multiprocess key of a counter's `_total` sample, as prometheus_client writes it
    (tests/integration/test_exemplars.py fails if that changes)."""
    family = counter.describe()[0]
    name = family.name
    return mmap_key(name, name + "_total", list(labelnames), list(values), family.documentation)


def bucket_keys(
    histogram: Histogram,
    labelnames: Sequence[str],
    values: Sequence[str],
    bounds: Sequence[float],
) -> tuple[str, ...]:
    """The multiprocess keys of a histogram's `_bucket` samples, one per upper bound."""
    family = histogram.describe()[0]
    names = [*labelnames, "le"]
    return tuple(
        mmap_key(
            family.name,
            family.name + "_bucket",
            names,
            [*values, floatToGoString(bound)],
            family.documentation,
        )
        for bound in bounds
    )


class ExemplarFile:
    """This process's exemplars, written in place: one slot per key, the latest call wins.

    Created on the first sampled call, in the process that makes it (after the fork).
    When every slot is taken, keys not seen before get no exemplar: the file never grows.
    """

    def __init__(self, directory: Path) -> None:
        path = file_of(directory, os.getpid())
        # A new inode, never an old file reused: readers cache keys per inode.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, SIZE)  # sparse: only the pages written take space
            self._mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.path = path
        self.pid = os.getpid()
        self._slots: dict[str, int] = {}
        self._used = 0
        self._key_used = 0
        self._lock = threading.Lock()

    def put(self, key: str, trace_id: str, value: float) -> None:
        """Make (trace id, value, now) the exemplar of `key`."""
        data = _DATA.pack(trace_id.encode("ascii"), value, time.time())
        record = data + _LENGTH.pack(zlib.crc32(data)) + b"\0\0\0\0"
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._add(key, record)
                if slot is not None:
                    self._slots[key] = slot
                return
            at = _RECORDS_AT + slot * _RECORD.size
            self._mm[at : at + _RECORD.size] = record

    def _add(self, key: str, record: bytes) -> int | None:
        encoded = key.encode("utf-8")
        entry = _LENGTH.pack(len(encoded)) + encoded
        if self._used >= SLOTS or self._key_used + len(entry) > KEY_BYTES:
            return None
        slot = self._used
        at = _RECORDS_AT + slot * _RECORD.size
        self._mm[at : at + _RECORD.size] = record
        keys_at = _KEYS_AT + self._key_used
        self._mm[keys_at : keys_at + len(entry)] = entry
        self._used += 1
        self._key_used += len(entry)
        _HEADER.pack_into(self._mm, 0, self._used, self._key_used)  # now readers see it
        return slot


class Recorder:
    """Where a process records its exemplars: its own file, opened at the first one.

    A process forked after that (a Recorder built before a fork) opens a file of its own
    rather than appending to its parent's: two writers would take the same slots.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file = PerProcess(lambda: ExemplarFile(directory))

    def _open(self) -> ExemplarFile:
        return self._file.get()

    def counter(self, key: str, trace_id: str) -> None:
        self._open().put(key, trace_id, 1.0)

    def observe(
        self, keys: Sequence[str], bounds: Sequence[float], trace_id: str, value: float
    ) -> None:
        """The exemplar of the bucket `value` falls in (the first bound >= value)."""
        index = bisect.bisect_left(bounds, value)
        if index < len(keys):
            self._open().put(keys[index], trace_id, value)


class _Seen:
    """What a reader knows of one file: its inode and the keys parsed so far."""

    __slots__ = ("inode", "key_used", "keys")

    def __init__(self, inode: int) -> None:
        self.inode = inode
        self.keys: list[str] = []
        self.key_used = 0


class Reader:
    """Every process's exemplars merged: the most recent per key. Keys are parsed once
    per file and kept; each scrape reads the records, one block per file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: dict[str, _Seen] = {}
        # Two scrapes at once (two Prometheus servers) must not both extend a file's key
        # list: keys are matched to records by position.
        self._lock = threading.Lock()

    def latest(self) -> dict[str, Exemplar]:
        with self._lock:
            return self._latest()

    def _latest(self) -> dict[str, Exemplar]:
        best: dict[str, tuple[str, float, float]] = {}
        present = set()
        for path in self.directory.glob(f"{PREFIX}*{SUFFIX}"):
            present.add(path.name)
            try:
                self._read(path, best)
            except (FileNotFoundError, struct.error, UnicodeDecodeError):
                continue  # a file removed or created under us: the next scrape reads it
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return {
            key: Exemplar({"trace_id": trace_id}, value, timestamp)
            for key, (trace_id, value, timestamp) in best.items()
        }

    def _read(self, path: Path, best: dict[str, tuple[str, float, float]]) -> None:
        with open(path, "rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            used, key_used = _HEADER.unpack(f.read(_HEADER.size))
            seen = self._seen.get(path.name)
            if seen is None or seen.inode != inode or seen.key_used > key_used:
                seen = self._seen[path.name] = _Seen(inode)
            if key_used > seen.key_used:
                f.seek(_KEYS_AT + seen.key_used)
                _parse_keys(f.read(key_used - seen.key_used), seen.keys)
                seen.key_used = key_used
            f.seek(_RECORDS_AT)
            records = f.read(min(used, len(seen.keys)) * _RECORD.size)
        for key, (trace, value, timestamp, crc) in zip(
            seen.keys, _RECORD.iter_unpack(records), strict=False
        ):
            if zlib.crc32(_DATA.pack(trace, value, timestamp)) != crc:
                continue  # being overwritten right now
            held = best.get(key)
            if held is None or timestamp > held[2]:
                best[key] = (trace.decode("ascii"), value, timestamp)


def _parse_keys(block: bytes, into: list[str]) -> None:
    at = 0
    while at < len(block):
        (length,) = _LENGTH.unpack_from(block, at)
        at += _LENGTH.size
        into.append(block[at : at + length].decode("utf-8"))
        at += length
