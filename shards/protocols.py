"""Parsers for the protocol files of ASVspoof 2019 LA, 2021 LA/DF, ASVspoof 5, In-the-Wild, CSV.

Each parser reads the file exactly as released (the formats below; docs/study.md names the
datasets) and returns one ``Record`` per utterance. A leading UTF-8 byte-order mark, which
spreadsheet tools and some editors add, is dropped for every format. Anything unexpected is a ``ShardsError`` naming ``path:lineno``,
the offending line and what is wrong with it: a protocol that parses "mostly" silently drops
whole classes (the 2021 keys put ``bonafide`` in the attack column, for instance).

Formats:
  asvspoof2019  ``SPEAKER UTT - ATTACK KEY``                 (5 columns; ATTACK "-" for bona fide)
  asvspoof2021  LA: ``speaker trial codec transmission attack key trim subset``   (8 columns)
                DF: ``speaker trial codec source attack key trim subset vocoder - - - -`` (13)
  asvspoof5     ``SPEAKER FILE GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK KEY TMP``
                (10 columns, space-separated despite the ``.tsv`` names; "-" for none;
                ATTACK ``A01``.. or ``bonafide``); also the Phase 1 pre-release
                ``ASVspoof5.{train,dev}.metadata.txt``: ``SPEAKER FILE GENDER CODEC ATTACK KEY``
  itw           meta.csv, header ``file,speaker,label``, labels ``bona-fide`` / ``spoof``
  csv           ``path,label[,attack,speaker]`` (comma or tab; optional header naming the
                columns, which may then come in any order and add ``utt_id``)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shards.errors import ShardsError

FORMATS = ("asvspoof2019", "asvspoof2021", "asvspoof5", "itw", "csv")
SUBSETS_2021 = ("eval", "progress", "hidden_track", "all")
# Protocol attack values that mean "no attack" on a bona fide line: LA19 writes "-", the 2021
# keys write "bonafide". Both are stored as "-" so every dataset spells bona fide the same.
_NO_ATTACK = ("-", "bonafide")
_CSV_LABELS = {"bonafide": "bonafide", "bona-fide": "bonafide", "spoof": "spoof"}
_CSV_COLUMNS = ("path", "label", "attack", "speaker", "utt_id")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Record:
    """One utterance of a protocol.

    ``path`` is the audio file relative to the audio directory (as the protocol names it;
    ASVspoof protocols name only the utterance, so it is ``<utt>.flac`` there).
    ``extras`` are format-specific metadata fields copied into the sample's json.
    """

    utt_id: str
    label: str
    attack: str
    speaker: str
    subset: str
    path: str
    lineno: int
    extras: dict[str, str] = field(default_factory=dict)


@dataclass
class Protocol:
    """A parsed protocol: its records (in file order) and the dataset name they belong to."""

    path: str
    dataset: str
    records: list[Record]


def bad_line(path: str | Path, lineno: int, line: str, why: str) -> ShardsError:
    """The error for one malformed protocol line: ``path:lineno: <line>`` then the reason."""
    shown = line if len(line) <= 200 else line[:200] + "..."
    return ShardsError(f"{path}:{lineno}: {shown}\n  {why}")


def check_key(utt_id: str) -> str | None:
    """Why ``utt_id`` cannot be a webdataset key, or None when it can.

    webdataset splits a member name at the first '.' after the last '/', so a key holding
    either would silently become another sample's key or extension.
    """
    if not utt_id or utt_id.strip() != utt_id:
        return f"utterance id {utt_id!r} is empty or has surrounding spaces"
    for ch, name in ((".", "a dot"), ("/", "a slash"), ("\\", "a backslash")):
        if ch in utt_id:
            return f"utterance id {utt_id!r} contains {name}: webdataset would mis-split the key"
    if any(ord(c) < 32 for c in utt_id):
        return f"utterance id {utt_id!r} contains a control character"
    return None


def _read_lines(path: Path):
    """Yield (lineno, line) for every non-blank line; UTF-8, a leading BOM dropped (else it
    would become part of the first speaker or column name)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ShardsError(f"protocol file not found: {path}") from None
    except UnicodeDecodeError as err:
        lineno = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ShardsError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
    text = text.removeprefix("\ufeff")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line


def _make_record(proto, lineno, line, seen, **fields) -> Record:
    """Build a Record after the checks every format shares: key, label/attack, duplicates."""
    why = check_key(fields["utt_id"])
    if why:
        raise bad_line(proto, lineno, line, why)
    label, attack = fields["label"], fields["attack"]
    if label == "bonafide" and attack not in _NO_ATTACK:
        raise bad_line(proto, lineno, line, f"bona fide line names attack {attack!r}")
    if label == "spoof" and attack in _NO_ATTACK:
        raise bad_line(proto, lineno, line, f"spoof line has no attack ({attack!r})")
    if label == "bonafide":
        fields["attack"] = "-"
    first = seen.setdefault(fields["utt_id"], lineno)
    if first != lineno:
        raise ShardsError(
            f"{proto}:{lineno}: {line}\n  duplicate utterance id {fields['utt_id']!r} "
            f"(first at line {first})"
        )
    return Record(lineno=lineno, **fields)


def _official_label(path, lineno, line, key: str) -> str:
    if key not in ("bonafide", "spoof"):
        raise bad_line(path, lineno, line, f"unknown label {key!r} (expected bonafide or spoof)")
    return key


def parse_asvspoof2019(path: str | Path, subset: str) -> list[Record]:
    """ASVspoof 2019 LA CM protocol: ``SPEAKER UTT - ATTACK KEY`` per line."""
    path, records, seen = Path(path), [], {}
    for lineno, line in _read_lines(path):
        cols = line.split()
        if len(cols) != 5:
            raise bad_line(path, lineno, line, f"expected 5 columns, found {len(cols)}")
        speaker, utt, _, attack, key = cols
        label = _official_label(path, lineno, line, key)
        records.append(_make_record(
            path, lineno, line, seen, utt_id=utt, label=label, attack=attack,
            speaker=speaker, subset=subset, path=f"{utt}.flac"))
    return records


def parse_asvspoof2021(path: str | Path, dataset: str | None = None) -> tuple[list[Record], str]:
    """ASVspoof 2021 ``trial_metadata.txt``: 8 columns for LA, 13 for DF.

    ``dataset`` ("la"/"df") is inferred from the first line's column count when None.
    Returns (records of every subset, dataset).
    """
    path, records, seen = Path(path), [], {}
    for lineno, line in _read_lines(path):
        cols = line.split()
        if dataset is None and len(cols) in (8, 13):
            dataset = "la" if len(cols) == 8 else "df"
        want = {"la": 8, "df": 13}.get(dataset or "", 0)
        if len(cols) != want:
            expect = f"{want} columns for 2021 {dataset.upper()}" if dataset else "8 or 13 columns"
            raise bad_line(path, lineno, line, f"expected {expect}, found {len(cols)}")
        speaker, utt, codec, chan, attack, key, trim, subset = cols[:8]
        label = _official_label(path, lineno, line, key)
        if subset not in SUBSETS_2021[:3]:
            raise bad_line(path, lineno, line, f"unknown subset {subset!r}")
        extras = {"codec": codec, "trim": trim}
        if dataset == "la":
            extras["transmission"] = chan
        else:
            extras.update(source_corpus=chan, vocoder=cols[8])
        records.append(_make_record(
            path, lineno, line, seen, utt_id=utt, label=label, attack=attack,
            speaker=speaker, subset=subset, path=f"{utt}.flac", extras=extras))
    return records, dataset or "la"


# Column names of the released ASVspoof 5 protocols (the database README) and of the Phase 1
# pre-release metadata files, which the organisers' baselines read as 6 columns, key last.
_ASVSPOOF5_COLUMNS = {
    10: ("speaker", "utt", "gender", "codec", "codec_q", "codec_seed", "attack_tag", "attack",
         "key", "tmp"),
    6: ("speaker", "utt", "gender", "codec", "attack", "key"),
}
_ASVSPOOF5_EXTRAS = ("gender", "codec", "codec_q", "codec_seed", "attack_tag")


def parse_asvspoof5(path: str | Path, subset: str) -> list[Record]:
    """ASVspoof 5 ``ASVspoof5.{train,dev.track_1,eval.track_1}.tsv`` (10 columns) or a Phase 1
    ``ASVspoof5.*.metadata.txt`` (6). Gender, codec (``-`` = uncoded), codec quality and seed
    and the attack tag go into the sample's metadata; every line must have the first line's
    column count."""
    path, records, seen, width = Path(path), [], {}, None
    for lineno, line in _read_lines(path):
        cols = line.split()
        width = width or (len(cols) if len(cols) in _ASVSPOOF5_COLUMNS else None)
        if len(cols) != width:
            want = f"{width} columns like line 1" if width else "10 columns (or 6, pre-release)"
            raise bad_line(path, lineno, line, f"expected {want}, found {len(cols)}")
        f = dict(zip(_ASVSPOOF5_COLUMNS[width], cols, strict=True))
        label = _official_label(path, lineno, line, f["key"])
        extras = {k: f[k] for k in _ASVSPOOF5_EXTRAS if k in f}
        records.append(_make_record(
            path, lineno, line, seen, utt_id=f["utt"], label=label, attack=f["attack"],
            speaker=f["speaker"], subset=subset, path=f"{f['utt']}.flac", extras=extras))
    return records


def parse_itw(path: str | Path, subset: str) -> list[Record]:
    """In-the-Wild ``meta.csv``: header ``file,speaker,label``, labels ``bona-fide``/``spoof``.

    ITW names no attack: bona fide gets "-" and spoof "unknown". utt_id = file stem.
    """
    path, records, seen = Path(path), [], {}
    lines = _read_lines(path)
    first = next(lines, None)
    if first is None or [c.strip() for c in first[1].split(",")] != ["file", "speaker", "label"]:
        lineno, line = first or (1, "")
        raise bad_line(path, lineno, line, "expected the header 'file,speaker,label'")
    for lineno, line in lines:
        cols = next(csv.reader([line]))
        if len(cols) != 3:
            raise bad_line(path, lineno, line, f"expected 3 fields, found {len(cols)}")
        file, speaker, key = cols
        if key not in ("bona-fide", "spoof"):
            raise bad_line(path, lineno, line,
                           f"unknown label {key!r} (expected bona-fide or spoof)")
        label = "bonafide" if key == "bona-fide" else "spoof"
        records.append(_make_record(
            path, lineno, line, seen, utt_id=PurePosixPath(file).name.rsplit(".", 1)[0],
            label=label, attack="-" if label == "bonafide" else "unknown",
            speaker=speaker, subset=subset, path=file))
    return records


def _csv_header(cols: list[str]) -> dict[str, int] | None:
    """Column positions when ``cols`` is a header row (it names ``path`` and ``label``)."""
    names = [c.strip().lower() for c in cols]
    if "path" not in names or "label" not in names:
        return None
    return {n: i for i, n in enumerate(names)}


def parse_csv(path: str | Path, subset: str) -> list[Record]:
    """Generic ``path,label[,attack,speaker]`` CSV (or TSV), header optional.

    Labels bonafide / bona-fide / spoof, any case. utt_id = file name without its last
    extension unless a header names a ``utt_id`` column.
    """
    path, records, seen = Path(path), [], {}
    header = None
    for n, (lineno, line) in enumerate(_read_lines(path)):
        cols = next(csv.reader([line], delimiter="\t" if "\t" in line else ","))
        if n == 0 and (header := _csv_header(cols)) is not None:
            unknown = sorted(set(header) - set(_CSV_COLUMNS))
            if unknown:
                raise bad_line(path, lineno, line, f"unknown column(s) {unknown}; "
                               f"allowed: {', '.join(_CSV_COLUMNS)}")
            continue
        want = (len(header),) if header else (2, 3, 4)
        if len(cols) not in want:
            raise bad_line(path, lineno, line, f"expected {' or '.join(map(str, want))} fields "
                           f"(path,label[,attack,speaker]), found {len(cols)}")
        pos = header or {name: i for i, name in enumerate(_CSV_COLUMNS[: len(cols)])}
        get = {name: cols[i].strip() for name, i in pos.items()}
        label = _CSV_LABELS.get(get["label"].lower())
        if label is None:
            raise bad_line(path, lineno, line, f"unknown label {get['label']!r} "
                           "(expected bonafide, bona-fide or spoof)")
        if not get["path"]:
            raise bad_line(path, lineno, line, "empty path")
        attack = get.get("attack") or ("-" if label == "bonafide" else "unknown")
        utt = get.get("utt_id") or PurePosixPath(get["path"]).name.rsplit(".", 1)[0]
        records.append(_make_record(
            path, lineno, line, seen, utt_id=utt, label=label, attack=attack,
            speaker=get.get("speaker") or "unknown", subset=subset, path=get["path"]))
    return records


def default_split(fmt: str, protocol: str | Path) -> str:
    """The split name when ``--split`` is not given.

    LA19 and ASVspoof 5: from the protocol name (``...cm.train.trn``, ``ASVspoof5.dev.track_1``
    -> train, dev); 2021 and ITW: "eval";
    CSV: the file stem when it is a valid split name.
    """
    name = Path(protocol).name
    if fmt in ("asvspoof2019", "asvspoof5"):
        for split in ("train", "dev", "eval"):
            if f".{split}." in name:
                return split
    elif fmt in ("asvspoof2021", "itw"):
        return "eval"
    elif _SPLIT_RE.match(Path(protocol).stem):
        return Path(protocol).stem
    raise ShardsError(f"cannot infer the split name from {name!r}: pass --split NAME")


def check_split(split: str) -> str:
    if not _SPLIT_RE.match(split):
        raise ShardsError(f"--split {split!r}: use letters, digits and '_' only "
                          "(it starts every shard name, '<split>-NNNNNN.tar')")
    return split


def load_protocol(fmt: str, path: str | Path, *, split: str, subset: str = "eval",
                  dataset: str | None = None) -> Protocol:
    """Parse a protocol of format ``fmt`` and keep the records to shard.

    ``subset`` filters ASVspoof 2021 trials (eval | progress | hidden_track | all); the other
    formats record ``split`` as every sample's subset. ``dataset`` ("la"/"df") is for 2021.
    """
    if fmt not in FORMATS:
        raise ShardsError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "asvspoof2021":
        if subset not in SUBSETS_2021:
            raise ShardsError(f"--subset {subset!r}: expected one of {', '.join(SUBSETS_2021)}")
        if dataset not in (None, "la", "df"):
            raise ShardsError(f"--dataset {dataset!r}: expected la or df")
        records, dataset = parse_asvspoof2021(path, dataset)
        records = [r for r in records if subset in ("all", r.subset)]
        name = f"asvspoof2021_{dataset}"
    else:
        parse = {"asvspoof2019": parse_asvspoof2019, "asvspoof5": parse_asvspoof5,
                 "itw": parse_itw, "csv": parse_csv}[fmt]
        records = parse(path, split)
        name = {"asvspoof2019": "asvspoof2019_la", "asvspoof5": "asvspoof5", "itw": "itw",
                "csv": "csv"}[fmt]
    if not records:
        raise ShardsError(f"{path}: no utterances to shard"
                          + (f" in subset {subset!r}" if fmt == "asvspoof2021" else ""))
    return Protocol(path=str(path), dataset=name, records=records)
