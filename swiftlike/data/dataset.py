"""Load, normalize and encode training data; report what was kept and what was dropped, and why."""
from __future__ import annotations

import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from ..accel import is_main_process
from ..errors import UserError
from ..templates import IGNORE_INDEX
from .files import BadLine, read_rows, row_file
from .formats import RowError, UselessRow, to_canonical
from .images import ImageError, expand, resolve_source
from .videos import resolve_video, video_name

ENCODE_CHUNK = 512
TRUNCATION = ("drop", "left", "right", "split")


@dataclass
class DataStats:
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    lengths: list = field(default_factory=list)
    trained_tokens: int = 0
    truncated: int = 0
    truncation_word: str = "truncated"  # "split" when long texts become several pieces
    cached: bool = False
    unit: str = "rows"          # what rows_read, kept and the drops count (preference data: "pairs")
    length_of: str = ""         # what one entry of `lengths` measures, when not simply a row's tokens
    selected: list = field(default_factory=list)  # what '#N' selections took ("data.jsonl#50: 50 of 1000 rows")
    tokens: int | None = None   # total tokens, when it is not the sum of `lengths` (pairs: chosen + rejected)

    def count_read(self, given: int) -> None:
        """Rows read, where load_rows has not counted them (rows given to an encoder directly): the ones given
        and the ones dropped before."""
        self.rows_read = self.rows_read or given + sum(self.dropped.values())

    def drops(self, sep: str = ", ") -> str:
        """'<sep>dropped N (why)' for every reason rows were dropped."""
        return "".join(f"{sep}dropped {n} ({why})" for why, n in self.dropped.items())

    def read(self) -> str:
        """'rows read N' and what '#N' selections took of them."""
        return f"{self.unit} read {self.rows_read}" + (f" ({'; '.join(self.selected)})" if self.selected else "")

    def report(self) -> str:
        kept = len(self.lengths)
        lines = [("(from the encoding cache) " if self.cached else "") + f"{self.read()}, kept {kept}"
                 + self.drops()
                 + (f", {self.truncation_word} {self.truncated}" if self.truncated else "")]
        if kept:
            s = sorted(self.lengths)
            pct = {p: s[min(kept - 1, int(p / 100 * kept))] for p in (50, 90, 99)}
            tokens = sum(s) if self.tokens is None else self.tokens
            of = f" ({self.length_of})" if self.length_of else ""
            lines.append(f"tokens {tokens} (trained {self.trained_tokens}); length{of} p50 {pct[50]} p90 {pct[90]} "
                         f"p99 {pct[99]} max {s[-1]}")
        return "\n".join(lines)


def hold_out(rows: list, ratio: float, seed: int, what: str = "rows") -> tuple[list, list]:
    """(kept, held out): a seeded share `ratio` of the rows set aside for validation, both in data order."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * ratio))
    if n_eval >= len(rows):
        raise UserError(f"--split_ratio {ratio} leaves no training {what} out of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def parse_selection(spec: str) -> tuple[str, int | None]:
    """'data.jsonl#500' -> ('data.jsonl', 500); without '#N' the whole source."""
    source, sep, count = spec.rpartition("#")
    if not sep:
        return spec, None
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"--dataset {spec}: '#' must be followed by a positive row count")
    return source, int(count)


def _select(items: list, n: int | None, rng: random.Random) -> list:
    """n rows: a seeded sample without replacement, or all rows plus a sample with replacement above the size."""
    if n is None:
        return items
    if n <= len(items):
        return rng.sample(items, n)
    return items + [rng.choice(items) for _ in range(n - len(items))]


_PLACEHOLDER = re.compile(r"\{\{(name|author)\}\}")


def _fill_placeholders(row, values: dict):
    if isinstance(row, str):
        for key, value in values.items():
            row = row.replace("{{" + key + "}}", value)
        return row
    if isinstance(row, list):
        return [_fill_placeholders(x, values) for x in row]
    if isinstance(row, dict):
        return {k: _fill_placeholders(v, values) for k, v in row.items()}
    return row


def _resolve(path: str, task: str, names: dict | None):
    """(source, column mapping, placeholder values, display name) for a path or a registered dataset name."""
    from pathlib import Path

    from .registry import DATASETS, lookup

    meta = None if Path(path).exists() or "::" in path else lookup(path)
    if meta is None:
        if not Path(path).exists() and "::" not in path and "/" not in path and "." not in path:
            raise UserError(f"dataset not found: {path} (not a file, and not a named dataset: "
                            f"{', '.join(sorted(DATASETS))})")
        return path, {}, None, path
    if meta.task != task:
        raise UserError(f"dataset {meta.name!r} is for {meta.task} training, not {task}")
    values = None
    if meta.placeholders:
        values = {k: (names or {}).get(k) for k in ("name", "author")}
        if not all(values.values()):
            raise UserError(f"dataset {meta.name!r} names the model: give --model_name and --model_author")
    return meta.path, meta.columns, values, meta.name


def load_rows(specs: list[str], sources: list | None = None, skip_bad_rows: bool = False,
              stats: DataStats | None = None, seed: int = 42, task: str = "sft", columns: dict | None = None,
              names: dict | None = None) -> list[dict]:
    """Canonical rows of every source (with '#N' selection); `sources` receives each row's origin.

    `columns` renames source columns first; `names` ({"name", "author"}) fills registered datasets'
    placeholders. A bad row is an error naming its origin, or with `skip_bad_rows` a counted entry in
    `stats.dropped`.
    """
    rng = random.Random(seed)
    rows, origins = [], []
    for spec in specs:
        path, count = parse_selection(spec)
        dropped_before = sum(stats.dropped.values()) if stats is not None else 0
        items = list(_canonical(path, task, columns, names, skip_bad_rows, stats))
        if not items:
            raise UserError(f"{path}: no usable rows")
        if stats is not None:  # every row read, the ones '#N' leaves out too
            stats.rows_read += len(items) + sum(stats.dropped.values()) - dropped_before
            if count is not None and count != len(items):
                stats.selected.append(f"{spec}: {count} of {len(items)} usable rows"
                                      f"{', some twice' if count > len(items) else ''}")
        for where, row in _select(items, count, rng):
            origins.append(where)
            rows.append(row)
    if sources is not None:
        sources.extend(origins)
    return rows


def _canonical(path: str, task: str, columns: dict | None, names: dict | None, skip_bad_rows: bool,
               stats: DataStats | None, streaming: bool = False):
    """(where, canonical row) for every usable row of one source."""
    source, mapping, values, shown = _resolve(path, task, names)
    mapping = {**mapping, **(columns or {})}
    values = values or {k: v for k, v in (names or {}).items() if v}  # --model_name/--model_author fill any file
    unfilled = 0
    for where, raw in read_rows(source, streaming):
        origin = row_file(where)  # (a folder holds several files)
        where = where.replace(source, shown, 1)
        try:
            if isinstance(raw, BadLine):
                raise RowError(str(raw))
            if mapping:
                raw = renamed(raw, mapping)
            row = to_canonical(raw, task)
            if row.get("images") or row.get("videos"):  # paths relative to the data file's folder
                base = origin.parent if origin is not None else None
                for key, resolve in (("images", resolve_source), ("videos", resolve_video)):
                    if row.get(key):
                        row[key] = [resolve(s, base) for s in row[key]]
        except UselessRow as e:
            if stats is not None:
                stats.dropped[str(e)] += 1
            continue
        except RowError as e:
            if not skip_bad_rows:
                raise UserError(f"{where}: {e}") from None
            if stats is not None:
                stats.dropped[f"bad row: {str(e).split(' (')[0]}"] += 1
            continue
        row = _fill_placeholders(row, values) if values else row
        if _PLACEHOLDER.search(repr(row)):
            unfilled += 1
        yield where, row
    if unfilled and is_main_process():
        print(f"[wb] warning: {shown}: {unfilled} rows contain {{{{name}}}} / {{{{author}}}} placeholders that "
              "are trained as written; give --model_name and --model_author to fill them", file=sys.stderr)


def renamed(raw: dict, mapping: dict) -> dict:
    """The row's columns renamed; two columns that would end under one name are an error, not one lost."""
    out, origin = {}, {}
    for key, value in raw.items():
        name = mapping.get(key, key)
        if name in out:
            raise RowError(f"columns {origin[name]!r} and {key!r} would both be {name!r} (--columns / the "
                           "dataset's column mapping); rename or drop one")
        out[name], origin[name] = value, key
    return out


WHERE = "_where"  # the origin a row read as training goes carries, for errors about it (templates ignore it)


def iter_rows(specs: list[str], task: str = "sft", columns: dict | None = None, names: dict | None = None,
              skip_bad_rows: bool = False):
    """Canonical rows of every source, read as they are consumed (for --streaming)."""
    for spec in specs:
        path, count = parse_selection(spec)
        if count is not None:
            raise UserError(f"--dataset {spec}: '#N' selection needs the whole source; it does not combine with "
                            "--streaming")
        for where, row in _canonical(path, task, columns, names, skip_bad_rows, None, streaming=True):
            yield {**row, WHERE: where}


def with_video_texts(template, row: dict) -> dict:
    """A row with videos: each video's text for the template — its pad tokens, and Qwen3-VL's timestamps — from
    the frames the model's video processor reads (data/videos.py)."""
    if not row.get("videos"):
        return row
    processing = getattr(template, "image_processing", None)
    if processing is None or template.video_token_id is None:
        raise ImageError(f"template {template.name} has no video processor for this row's videos")
    video = processing.video
    clips = [video.probe(v) for v in row["videos"]]
    grids = [video.grid(c, video_name(v)) for c, v in zip(clips, row["videos"])]
    texts = [template.video_text(g, video.merge, video.timestamps(c)) for g, c in zip(grids, clips)]
    return {**row, "video_texts": texts, "video_grid": [list(g) for g in grids]}


def encode_images(template, row: dict, encoded: dict) -> dict:
    """A row with images: its image tokens expanded to each image's size (data/images.py); with videos: its video
    tokens (already expanded as text, `with_video_texts`) never trained, and the videos recorded."""
    if row.get("videos"):
        video_ids = {template.video_token_id, *template.image_token_ids[1]}
        encoded = {**encoded, "labels": [IGNORE_INDEX if t in video_ids else label
                                         for t, label in zip(encoded["input_ids"], encoded["labels"])],
                   "videos": list(row["videos"]), "video_grid": row["video_grid"]}
    if not row.get("images"):
        return encoded
    processing = getattr(template, "image_processing", None)
    if processing is None:
        raise ImageError(f"template {template.name} has no image processor for this row's images")
    pad_id, span = template.image_token_ids
    return expand(encoded, row["images"], processing, pad_id, span)


def encode_with_media(template, rows: list[dict]) -> list[dict]:
    """Rows encoded by the template, their videos and images expanded to the model's token counts."""
    rows = [with_video_texts(template, r) for r in rows]
    return [encode_images(template, r, e) for r, e in zip(rows, template.encode_batch(rows))]


def encode_each(rows: list[dict], encode, sources: list | None, offset: int, skip: bool, what: str = "row"
                ) -> tuple[list, Counter]:
    """encode(rows), and where the template or an image refuses one, row by row: the row named in the error, or
    (`skip`, --skip_bad_rows) None in its place and counted in the rejection counts returned."""
    try:
        return encode(rows), Counter()
    except (UserError, ImageError):  # (TemplateError, a message's or a prompt image's error)
        out, rejected = [], Counter()
        for i, row in enumerate(rows):
            try:
                out += encode([row])
            except (UserError, ImageError) as e:
                if not skip:
                    where = sources[offset + i] if sources else f"{what} {offset + i}"
                    raise UserError(f"{where}: {e}") from None
                rejected[f"rejected by the template: {e}"] += 1
                out.append(None)
        return out, rejected


def _encode_chunk(template, rows: list[dict], sources: list | None, offset: int, skip: bool
                  ) -> tuple[list[dict | None], Counter]:
    """Encoded rows (None where the template rejects a skipped row) and the rejection counts."""
    return encode_each(rows, lambda some: encode_with_media(template, some), sources, offset, skip)


_WORK: dict = {}  # what forked encoding workers share (set before the pool starts)


def _encode_job(start: int):
    w = _WORK
    return _encode_chunk(w["template"], w["rows"][start:start + ENCODE_CHUNK], w["sources"], start, w["skip"])


def _encode_all(template, rows: list[dict], sources: list | None, skip: bool, num_proc: int):
    starts = range(0, len(rows), ENCODE_CHUNK)
    if num_proc <= 1 or len(starts) < 2:
        return [_encode_chunk(template, rows[s:s + ENCODE_CHUNK], sources, s, skip) for s in starts]
    import multiprocessing as mp

    _WORK.update(template=template, rows=rows, sources=sources, skip=skip)
    try:
        with mp.get_context("fork").Pool(num_proc) as pool:
            return pool.map(_encode_job, starts)
    finally:
        _WORK.clear()


class NoRowsLeft(UserError):
    """Every row was dropped (too long, no trained tokens, rejected and skipped)."""


def _truncate(enc: dict, max_length: int, strategy: str) -> dict:
    cut = slice(-max_length, None) if strategy == "left" else slice(0, max_length)
    ids, labels = enc["input_ids"][cut], enc["labels"][cut]
    return {"input_ids": ids, "labels": labels, "length": len(ids)}


def _split(enc: dict, max_length: int) -> list[dict]:
    """Consecutive pieces of at most max_length tokens, each starting with the last token of the one before: a
    piece's first token is predicted by nothing, so this way every token after the text's first is trained once
    (none is lost at a border, not even an end-of-text token alone past the last full piece)."""
    ids, labels, step = enc["input_ids"], enc["labels"], max(max_length - 1, 1)
    starts = range(0, max(len(ids) - 1, 1), step)
    return [{"input_ids": ids[i:i + max_length], "labels": labels[i:i + max_length],
             "length": len(ids[i:i + max_length])} for i in starts]


def encode_rows(rows: list[dict], template, max_length: int, sources: list | None = None,
                truncation_strategy: str = "drop", skip_bad_rows: bool = False,
                stats: DataStats | None = None, num_proc: int = 1) -> tuple[list[dict], DataStats]:
    """Encode canonical rows (in `num_proc` processes); rows over max_length are dropped (counted) or
    truncated left/right."""
    if truncation_strategy not in TRUNCATION:
        raise UserError(f"--truncation_strategy {truncation_strategy!r} is not one of {', '.join(TRUNCATION)}")
    stats = stats or DataStats()
    if truncation_strategy == "split":
        stats.truncation_word = "split"
    stats.count_read(len(rows))
    encoded = []
    for chunk, rejected in _encode_all(template, rows, sources, skip_bad_rows, num_proc):
        stats.dropped.update(rejected)
        for enc in chunk:
            if enc is None:
                continue
            pieces = [enc]
            if enc["length"] > max_length:
                if truncation_strategy == "drop":
                    stats.dropped[f"longer than max_length {max_length}"] += 1
                    continue
                if enc.get("images") or enc.get("videos"):  # a cut through an image span would leave pixels
                    stats.dropped[f"longer than max_length {max_length} (rows with images or videos are never "
                                  "cut)"] += 1
                    continue
                stats.truncated += 1
                pieces = _split(enc, max_length) if truncation_strategy == "split" else \
                    [_truncate(enc, max_length, truncation_strategy)]
            for piece in pieces:
                trained = sum(1 for x in piece["labels"][1:] if x != -100)
                if trained == 0:
                    stats.dropped["no trained tokens"] += 1
                    continue
                encoded.append(piece)
                stats.lengths.append(piece["length"])
                stats.trained_tokens += trained
    if not encoded:
        raise NoRowsLeft(f"no rows left to train on: {stats.report().splitlines()[0]}")
    return encoded, stats
