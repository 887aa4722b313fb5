"""The catalogue index: every release's metadata in one compressed object, read at start-up.

A push server or `push releases` reads this one object (plus the journal's tail) instead of
listing `debs/` and reading a million metadata headers. push.catalog decides when it is
read, trusted, folded and written; this module only knows the format, version 1, at
`layout.catalog_index_key(1)`:

    a gzip file of several members, so that `zcat` prints it as JSON lines;
    member 1, the header, one line:
      {"format": "push-catalog-index", "version": 1, "written": TIME, "writer": WHO,
       "journal_ns": NS, "listed_ns": NS, "releases": N, "skipped": {KEY: [GENERATION, WHY]},
       "blocks": [[APP, COMPRESSED BYTES, RELEASES], ...],
       "newest": {APP: [NAME, GENERATION, METADATA], ...}}
    then one member per block: up to BLOCK_RELEASES releases of one app, newest first, one
    line each: [NAME, GENERATION, METADATA], the object's metadata less what the name says
    (appname, userid, hash, datetime).

Blocks follow in the header's order: apps sorted, an app's blocks newest first. A reader
keeps the compressed bytes and inflates a block only when one of its releases is asked
for, so loading a million releases costs one download and a header parse. "newest" repeats
each app's first row (its newest release), so that the first question a push server asks of
every app at start-up inflates nothing; an index written without it (by an older Push) is
read as before, the newest row taken from the first block.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from push import layout
from push.errors import InvalidData, InvalidInput
from push.names import check_app
from push.release import ReleaseInfo, app_of

FORMAT = "push-catalog-index"
VERSION = 1
BLOCK_RELEASES = 1000
# Per block, compressed alone: 5% larger than one stream over everything (measured on
# 200,000 releases), and a block can be read, or copied into the next index, by itself.
_LEVEL = 6
# Metadata keys the release name already says; rebuilt from it on reading.
_FROM_NAME = ("appname", "userid", "hash", "datetime")
_encode = json.JSONEncoder(separators=(",", ":")).encode
# The name and generation at the start of a row, when neither holds an escape. '["' starts
# only rows: metadata values are strings, where a quote is escaped. Unanchored, so that the
# search for it is a fast literal scan (about 1 µs a row).
_ROW_HEAD = re.compile(r'\["([^"\\\n]*)","([^"\\\n]*)"')

Row = tuple[str, str, dict[str, str]]  # name, generation, metadata less what the name says


@dataclass(frozen=True)
class IndexMeta:
    """What an index says of itself besides its releases."""

    journal_ns: int        # every journal entry up to here is folded in
    listed_ns: int         # when the listing of debs/ it reflects began
    written: str = ""      # when it was written (timestamps.format_time)
    writer: str = ""       # who wrote it, for people reading the bucket
    # Objects under debs/ that are not releases: key -> (generation, why).
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """Up to BLOCK_RELEASES releases of one app, compressed, at `start` in the index."""

    app: str
    start: int
    length: int
    count: int


def row_of(info: ReleaseInfo, generation: str) -> Row:
    md = info.to_metadata()
    for key in _FROM_NAME:
        md.pop(key, None)
    return info.name, generation, md


def info_of(row: Row) -> ReleaseInfo:
    """The release a row describes, checked as a release object's metadata is; InvalidRelease if bad."""
    name, _, md = row
    return ReleaseInfo.from_metadata(layout.release_key(name), {**md, "appname": app_of(name)})


def _compress(text: str) -> bytes:
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip member
    return c.compress(text.encode()) + c.flush()


def encode_block(rows: Iterable[Row]) -> bytes:
    return _compress("".join(_encode(list(r)) + "\n" for r in rows))


def blocks_of(rows: Sequence[Row]) -> list[tuple[bytes, int]]:
    """An app's rows (newest first) as compressed blocks with their counts."""
    return [(encode_block(rows[i:i + BLOCK_RELEASES]), len(rows[i:i + BLOCK_RELEASES]))
            for i in range(0, len(rows), BLOCK_RELEASES)]


def encode(meta: IndexMeta, blocks: Iterable[tuple[str, bytes | memoryview, int]],
           newest: dict[str, Row] | None = None) -> bytes:
    """The index file: `blocks` are (app, compressed block, releases), in the order to keep;
    `newest`, each app's first row (the header repeats it)."""
    table: list[list[Any]] = []
    parts: list[bytes | memoryview] = []
    for app, data, count in blocks:
        table.append([app, len(data), count])
        parts.append(data)
    header = {"format": FORMAT, "version": VERSION, "written": meta.written, "writer": meta.writer,
              "journal_ns": meta.journal_ns, "listed_ns": meta.listed_ns,
              "releases": sum(t[2] for t in table),
              "skipped": {k: list(v) for k, v in sorted(meta.skipped.items())}, "blocks": table}
    if newest is not None:
        header["newest"] = {app: list(row) for app, row in sorted(newest.items())}
    return b"".join([_compress(json.dumps(header, separators=(",", ":")) + "\n"), *parts])


class CatalogIndex:
    """An index as read: its header, and its blocks still compressed. Immutable; thread-safe."""

    def __init__(self, meta: IndexMeta, data: bytes, blocks: dict[str, tuple[Block, ...]], size: int,
                 source: str, newest: dict[str, object] | None = None) -> None:
        self.meta = meta
        self.size = size          # bytes of the object
        self.source = source      # where it was read, for messages
        self._data = memoryview(data)
        self._blocks = blocks
        self._newest = newest or {}  # app -> its first row as the header has it, checked when read
        self.releases = sum(b.count for bs in blocks.values() for b in bs)
        # The blocks last inflated: a fleet view asks for the newest release and the deployed
        # ones of the same app one after the other.
        self._text = functools.lru_cache(maxsize=64)(self._inflate)

    @classmethod
    def decode(cls, data: bytes, source: str) -> CatalogIndex:
        """Read an index file; InvalidData if it is not a version-1 index (nothing is inflated
        but the header: a damaged block is found when read)."""
        def bad(why: str) -> InvalidData:
            return InvalidData(f"catalogue index {source} is unusable: {why}", key=source)

        d = zlib.decompressobj(31)
        try:
            head = d.decompress(data, 64 * 1024 * 1024)
            if not d.eof:
                raise bad("its header is not one complete gzip member")
            header = json.loads(head)
        except (zlib.error, ValueError) as e:
            raise bad(f"cannot read its header ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise bad(f"not a {FORMAT} file")
        if header.get("version") != VERSION:
            raise bad(f"format version {header.get('version')!r}, this Push reads version {VERSION}")
        try:
            meta = IndexMeta(journal_ns=int(header["journal_ns"]), listed_ns=int(header["listed_ns"]),
                             written=str(header.get("written", "")), writer=str(header.get("writer", "")),
                             skipped={str(k): (str(v[0]), str(v[1])) for k, v in header["skipped"].items()})
            table = [(str(app), int(length), int(count)) for app, length, count in header["blocks"]]
            total = int(header["releases"])
            newest = header.get("newest")
            if newest is not None and not isinstance(newest, dict):
                raise TypeError("newest is not an object")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise bad(f"its header lacks or mangles a field ({type(e).__name__}: {e})") from None
        start = len(data) - len(d.unused_data)
        blocks: dict[str, list[Block]] = {}
        last = None
        for app, length, count in table:
            try:
                check_app(app)
            except InvalidInput as e:
                raise bad(str(e)) from None
            if length <= 0 or not 0 < count <= BLOCK_RELEASES:
                raise bad(f"a block of {app} has {length} bytes and {count} releases")
            if app != last and app in blocks:
                raise bad(f"the blocks of {app} are not together")
            blocks.setdefault(app, []).append(Block(app, start, length, count))
            start += length
            last = app
        if start != len(data):
            raise bad(f"its blocks add up to {start} bytes, the file has {len(data)}")
        if sum(c for _, _, c in table) != total:
            raise bad(f"its blocks hold {sum(c for _, _, c in table)} releases, its header says {total}")
        return cls(meta, data, {a: tuple(b) for a, b in blocks.items()}, len(data), source, newest)

    # -- reading -------------------------------------------------------------------------

    def _inflate(self, block: Block) -> str:
        try:
            text = zlib.decompress(self._data[block.start:block.start + block.length], 31).decode()
        except (zlib.error, UnicodeDecodeError) as e:
            raise InvalidData(f"catalogue index {self.source}: a block of {block.app} is damaged ({e})",
                              key=self.source) from None
        if text.count("\n") != block.count or not text.endswith("\n"):
            raise InvalidData(f"catalogue index {self.source}: a block of {block.app} holds "
                              f"{text.count(chr(10))} lines, its header says {block.count}", key=self.source)
        return text

    def _rows(self, text: str, block: Block) -> list[Row]:
        try:
            rows = json.loads("[" + text[:-1].replace("\n", ",") + "]")
            return [(str(n), str(g), _metadata(m)) for n, g, m in rows]
        except (ValueError, TypeError) as e:
            raise InvalidData(f"catalogue index {self.source}: a block of {block.app} is not rows of "
                              f"[name, generation, metadata] ({e})", key=self.source) from None

    def apps(self) -> list[str]:
        return sorted(self._blocks)

    def count(self, app: str) -> int:
        return sum(b.count for b in self._blocks.get(app, ()))

    def rows(self, app: str) -> list[Row]:
        """Every row of `app`, newest first. InvalidData if a block is damaged."""
        return [row for block in self._blocks.get(app, ()) for row in self._rows(self._text(block), block)]

    def newest(self, app: str) -> Row | None:
        """The newest row of `app`, inflating only the start of its first block (a fleet view
        asks this of every app; the whole block, CRC checked, is read when more is asked).
        From the header when it has the app's newest row: nothing is inflated."""
        for block in self._blocks.get(app, ())[:1]:
            head_row = self._newest.get(app)
            if isinstance(head_row, list) and len(head_row) == 3:
                try:
                    return str(head_row[0]), str(head_row[1]), _metadata(head_row[2])
                except TypeError:
                    pass  # damaged: the block says
            try:
                head = zlib.decompressobj(31).decompress(self._data[block.start:block.start + block.length], 1024)
                end = head.index(b"\n")
                return self._rows(head[:end + 1].decode(), block)[0]
            except (zlib.error, UnicodeDecodeError, ValueError):
                text = self._text(block)  # a row longer than 1 KiB, or damage (raised from here)
                return self._rows(text[:text.index("\n") + 1], block)[0]
        return None

    def find(self, name: str) -> Row | None:
        """The row of release `name`, None if the index does not hold it."""
        needle = '["' + json.dumps(name)[1:-1] + '",'
        for block in self._blocks.get(app_of(name), ()):
            text = self._text(block)
            i = text.find(needle)
            while i > 0 and text[i - 1] != "\n":
                i = text.find(needle, i + 1)
            if i >= 0:
                return self._rows(text[i:text.index("\n", i) + 1], block)[0]
        return None

    def names(self, app: str) -> dict[str, str]:
        """name -> generation of every release of `app`, without decoding their metadata."""
        out: dict[str, str] = {}
        for block in self._blocks.get(app, ()):
            text = self._text(block)
            pairs = _ROW_HEAD.findall(text)
            if len(pairs) != block.count:  # a name with an escape (a quote, a non-ASCII letter)
                pairs = [(n, g) for n, g, _ in self._rows(text, block)]
            out.update(pairs)
        return out

    def blocks(self, app: str) -> Iterator[tuple[str, memoryview, int]]:
        """The compressed blocks of `app`, as `encode` takes them (to copy an unchanged app)."""
        for b in self._blocks.get(app, ()):
            yield app, self._data[b.start:b.start + b.length], b.count


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("metadata is not an object of strings")
    return value
