"""Samples of one WebDataset tar shard, grouped as webdataset groups them, read cheaply.

Shards are standard WebDataset tars, and webdataset (wds.WebDataset, or
wds.tariterators.tar_file_expander + group_by_keys) reads them as usual. The loaders read
them here instead because webdataset's per-member path (tarfile's TarInfo objects and stream
wrapper, a dict per member, regex splits) costs about 0.1 ms per sample more than this
reader: on one core, a tenth of the time it takes to decode a 4 s FLAC crop
(bench/bench_data.py). For the members every WebDataset writer produces (plain ustar headers
of regular files: tarfile's PAX format adds no extended header for short ASCII names) this
module parses the 512-byte headers itself and groups members into samples with webdataset's
own key rule (tariterators.base_plus_ext) and skip rules. Anything else (extended or GNU
headers, links, directories, compression, a bad checksum, a duplicate or truncated member)
makes it read the shard again with webdataset, from the first sample not yet returned, so
such tars give exactly what webdataset gives, errors included
(tests/test_data_fastpath.py compares the two readers).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

import webdataset as wds

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0")  # the regular-file types handled here; others go to webdataset
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # tar_file_iterator's default skip_meta
_ENCODING = sys.getfilesystemencoding()  # tarfile's, with errors="surrogateescape"
_base_plus_ext = wds.tariterators.base_plus_ext


class _Unsupported(Exception):
    """The lean reader met something it leaves to webdataset."""


def iter_samples(path: str, first: int = 0) -> Iterator[dict | None]:
    """Samples of the tar at `path` as webdataset's group_by_keys yields them (dicts with
    "__key__", "__url__" and one bytes value per extension), in tar order; for each of the
    first `first` samples None is yielded instead, without reading its data. Raises what
    webdataset raises on an unreadable tar, after the samples before the problem."""
    done = 0
    try:
        # Unbuffered: audio members are read straight into their bytes objects (one copy).
        with open(path, "rb", buffering=0) as stream:
            for sample in _lean(stream, path, first):
                yield sample
                done += 1
        return
    except _Unsupported:
        pass
    with open(path, "rb", buffering=1 << 20) as stream:
        files = wds.tariterators.tar_file_expander([{"url": path, "stream": stream}])
        for i, sample in enumerate(wds.tariterators.group_by_keys(files)):
            if i >= done:
                yield sample if i >= first else None


def _header(buf: bytes) -> tuple[str, int]:
    """(member name, data size) of a regular file's ustar header; _Unsupported otherwise."""
    if len(buf) != _BLOCK or buf[156:157] not in _REGULAR:
        raise _Unsupported
    try:
        chksum = int(buf[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:  # base-256 numbers and garbage: tarfile's parser decides
        raise _Unsupported from None
    # The checksum counts its own 8-byte field as spaces (8 * 32).
    if chksum != sum(buf) - sum(buf[148:156]) + 256:
        raise _Unsupported
    name = buf[0:100].split(b"\0", 1)[0].decode(_ENCODING, "surrogateescape")
    prefix = buf[345:500].split(b"\0", 1)[0].decode(_ENCODING, "surrogateescape")
    if prefix:
        name = prefix + "/" + name
    if name.endswith("/"):  # an old-style directory entry
        raise _Unsupported
    return name, size


def _lean(stream, url: str, first: int) -> Iterator[dict]:
    """group_by_keys(tar_file_expander(...)) for plain ustar tars, from sample `first` on."""
    end = os.fstat(stream.fileno()).st_size
    sample, index, pos = None, -1, 0
    while True:
        buf = stream.read(_BLOCK)
        if not buf or buf == _ZERO_BLOCK:  # end of archive (tarfile stops at either) ...
            if pos == 0:  # ... except at the start, where tarfile calls it an error
                raise _Unsupported
            break
        name, size = _header(buf)
        pos += _BLOCK + size + (-size % _BLOCK)  # where the next header starts
        if pos > end:
            raise _Unsupported  # truncated member: webdataset's error message
        key, ext = _base_plus_ext(name)
        if key is None or _SKIP_META.match(name) or \
                ("/" not in name and name.startswith("__") and name.endswith("__")):
            stream.seek(pos)
            continue
        ext = ext.lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample if index >= first else None
            sample, index = {"__key__": key, "__url__": url}, index + 1
        if ext in sample:
            raise _Unsupported  # webdataset's duplicate-member error
        if index < first:
            sample[ext] = b""
        else:
            sample[ext] = stream.read(size)
            if len(sample[ext]) != size:  # a short read: leave it to webdataset
                raise _Unsupported
        if index < first or size % _BLOCK:
            stream.seek(pos)  # past the skipped data or the padding
    if sample is not None:
        yield sample if index >= first else None
