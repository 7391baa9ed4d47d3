"""Many Avro messages of one flat schema decoded at once, as columns.

fastavro decodes one message per call into a dict: about 3.4 µs a trade on the bench
machine, and at Kafka's pace most of the flow's decode (issue 16). Here each field is read
for every message of a batch at once with numpy: a message's bytes are walked field by
field, all messages in step, so the cost is a few array operations per field, not Python
per message.

It answers only where it decodes exactly as `schemas.codec.decode` (fastavro) does, and
says None otherwise, for the caller to decode message by message (which names what is
wrong). A flat schema: fields of type long, double, string and ["null", "string"]. A batch
is refused whole if a message breaks the schema (too short, trailing bytes, a negative
length, a union branch other than null or string) or holds what this reader leaves to
fastavro: a varint longer than 9 bytes (a value past 2^62) or a string with a byte outside
ASCII (fastavro checks the UTF-8).

Strings stay bytes until asked for (`Texts`): a trade's strategy and schema version are
checked and dropped, its side compared, and only its id made a `str`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from schemas.codec import _raw

KINDS = frozenset({"long", "double", "string"})  # a field of one of these is its own kind
NULLABLE_STRING = ["null", "string"]
MAX_VARINT_BYTES = 9  # 63 bits: every long below 2^62 in zigzag
MIN_ROWS = 64  # fewer messages: fastavro one by one costs no more than the arrays
PAD = 16  # bytes after the last message, so that reading a varint never runs off the end


@dataclass(frozen=True)
class Texts:
    """A string column: row i is `data[start[i] : start[i] + size[i]]` (ASCII), None where
    `size[i]` is -1 (the null branch of an optional string)."""

    data: bytes
    buf: np.ndarray  # `data` as uint8, for comparisons
    start: np.ndarray
    size: np.ndarray

    def tolist(self) -> list[str | None]:
        d = self.data
        return [
            None if k < 0 else d[s : s + k].decode("ascii")
            for s, k in zip(self.start.tolist(), self.size.tolist(), strict=True)
        ]

    def first(self) -> str | None:
        k = int(self.size[0])
        return None if k < 0 else self.data[self.start[0] : self.start[0] + k].decode("ascii")

    def equal(self, value: str | None) -> np.ndarray:
        """Per row: equal to `value` (None: the row is null)."""
        if value is None:
            return self.size < 0
        want = np.frombuffer(value.encode("ascii"), np.uint8)
        same = self.size == len(want)
        if len(want) and same.any():
            rows = np.flatnonzero(same)
            at = self.start[rows, None] + np.arange(len(want))
            same[rows] = (self.buf[at] == want).all(axis=1)
        return same

    def all_null(self) -> bool:
        return bool((self.size < 0).all())

    def take(self, rows: np.ndarray) -> Texts:
        return Texts(self.data, self.buf, self.start[rows], self.size[rows])


Column = np.ndarray | Texts


@cache
def flat_fields(name: str) -> tuple[tuple[str, str], ...] | None:
    """(field, kind) for each field of schema `name`; None if it is not flat."""
    out = []
    for f in _raw(name)["fields"]:
        t = f["type"]
        if t == NULLABLE_STRING:
            out.append((f["name"], "nullable"))
        elif isinstance(t, str) and t in KINDS:
            out.append((f["name"], t))
        else:
            return None
    return tuple(out)


def decode_columns(name: str, payloads: list[bytes]) -> dict[str, Column] | None:
    """Every field of every message: int64 arrays for longs, float64 for doubles, `Texts`
    for strings; None where a message is not decoded here (the module docstring says when).
    Row i is what `schemas.codec.decode(name, payloads[i])` gives."""
    fields = flat_fields(name)
    if fields is None or not payloads:
        return None
    n = len(payloads)
    size = np.fromiter(map(len, payloads), np.int64, n)
    end = np.cumsum(size)
    pos = end - size
    data = b"".join(payloads)
    data += bytes(PAD + (-len(data)) % 8)  # whole 8-byte words, for `_HighBytes`
    buf = np.frombuffer(data, np.uint8)
    high = _HighBytes(buf)
    out: dict[str, Column] = {}
    for field, kind in fields:
        if kind == "double":
            if (end - pos < 8).any():
                return None
            raw = buf[pos[:, None] + np.arange(8)]
            out[field] = raw.view("<f8").ravel()
            pos = pos + 8
            continue
        present = None
        if kind == "nullable":
            branch = _varint(buf, pos, end)
            if branch is None:
                return None
            index, width = branch
            if ((index != 0) & (index != 1)).any():
                return None
            pos = pos + width
            present = index == 1
        read = _varint(buf, pos, end, present)
        if read is None:
            return None
        value, width = read
        pos = pos + width
        if kind == "long":
            out[field] = value
            continue
        length = value if present is None else np.where(present, value, -1)
        if present is None:
            present = np.ones(n, bool)
        if (present & ((length < 0) | (length > end - pos))).any():
            return None
        start = pos
        pos = pos + np.maximum(length, 0)
        if (high.before(pos) != high.before(start)).any():
            return None
        out[field] = Texts(data, buf, start, length)
    if (pos != end).any():  # trailing bytes
        return None
    return out


class _HighBytes:
    """How many bytes of `buf` before a position are outside ASCII (0x80 and up), from
    a running count per 8-byte word and the bits of the word the position falls in: a
    tenth of the time of a running count per byte (0.19 against 1.8 ms for 20,000
    trades; the per-byte count was 7% of a Kafka run). `buf`'s length is a multiple of
    8, and a position below it."""

    TOP_BITS = np.uint64(0x8080808080808080)  # each byte's top bit
    # the bytes of a little-endian word before byte r: its 8 * r low bits
    BEFORE = np.array([(1 << (8 * r)) - 1 for r in range(8)], dtype=np.uint64)

    def __init__(self, buf: np.ndarray) -> None:
        self.words = buf.view("<u8")
        self.count = np.zeros(len(self.words) + 1, np.int64)  # before each word
        np.cumsum(np.bitwise_count(self.words & self.TOP_BITS), dtype=np.int64, out=self.count[1:])

    def before(self, pos: np.ndarray) -> np.ndarray:
        w = pos >> 3
        part = self.words[w] & (self.TOP_BITS & self.BEFORE[pos & 7])
        return self.count[w] + np.bitwise_count(part)


def _varint(
    buf: np.ndarray, pos: np.ndarray, end: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The zigzag long at each position (of `rows` only, where given; 0 elsewhere) and its
    width in bytes; None if one is longer than MAX_VARINT_BYTES or runs past its
    message's end."""
    first = buf[pos].astype(np.int64)
    if rows is None and (first < 0x80).all() and (end > pos).all():  # the usual case
        return (first >> 1) ^ -(first & 1), np.ones(len(pos), np.int64)
    value = np.zeros(len(pos), np.int64)
    width = np.zeros(len(pos), np.int64)
    live = np.ones(len(pos), bool) if rows is None else rows.copy()
    for k in range(MAX_VARINT_BYTES):
        if not live.any():
            break
        b = buf[pos + k].astype(np.int64)
        value |= np.where(live, (b & 0x7F) << (7 * k), 0)
        stop = live & (b < 0x80)
        width[stop] = k + 1
        live &= ~stop
    if live.any() or (width > end - pos).any():
        return None
    return (value >> 1) ^ -(value & 1), width
