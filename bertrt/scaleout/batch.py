"""``bertrt predict --ray``: a JSONL dataset, larger than memory, through Ray Data and a pool of ``Runtime`` actors.

The driver reads the input once without keeping it, cutting it into *shards* of ``rows_per_task`` lines: (file, byte
range, first line number). Ray Data maps the shards over an autoscaling pool of actors (``concurrency=(min, max)``),
each holding one ``Runtime``; an actor reads its shard's lines itself, predicts them (the same parsing and the same
``Runtime.predict`` as ``bertrt predict``) and writes them to ``part-<shard>.<ext>``, via a temporary name and a
rename, so the file appears whole or not at all. Each output row is the usual output object plus ``id``: the input
line's ``id`` field, or else its line number (``file:line`` when the input is a folder of several files); in Parquet
the id column is text.

Exactly once: a shard always maps to the same part file, so when an actor dies and Ray retries its task (Ray Data
restarts actors and retries their tasks), the retry rewrites that file whole; a row is never lost or written twice.
The driver checks that every shard's file holds the rows the shard held, and the output folder appears only then
(``atomic_dir``). On a multi-node cluster, input and output must be on a filesystem every node sees.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

FORMATS = {"jsonl": "jsonl", "parquet": "parquet"}


@dataclass
class Shard:
    shard: int
    path: str
    start: int  # byte offsets [start, end)
    end: int
    first_line: int  # 1-based line number of the byte at ``start``
    rows: int  # non-blank lines
    name: str  # the file's name in ids ("": a single input file, ids are bare line numbers)


def input_files(path: Path) -> list[Path]:
    """A JSONL file, or every ``*.jsonl`` file of a folder (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".jsonl", ".json"))
        if not files:
            raise InputError(f"{path} holds no .jsonl files")
        return files
    raise InputError(f"input not found: {path}")


def plan_shards(files: list[Path], rows_per_task: int) -> list[Shard]:
    """Cut the files into shards of at most ``rows_per_task`` non-blank lines, streaming (nothing kept)."""
    if rows_per_task < 1:
        raise InputError(f"--rows-per-task must be >= 1 (got {rows_per_task})")
    shards: list[Shard] = []
    for f in files:
        name = f.name if len(files) > 1 else ""
        with open(f, "rb") as fh:
            start, offset, line_no, first, rows = 0, 0, 0, 1, 0
            for line in fh:
                line_no += 1
                offset += len(line)
                if line.strip():
                    rows += 1
                if rows == rows_per_task:
                    shards.append(Shard(len(shards), str(f), start, offset, first, rows, name))
                    start, first, rows = offset, line_no + 1, 0
            if rows:
                shards.append(Shard(len(shards), str(f), start, offset, first, rows, name))
    return shards


def read_shard(shard: Shard) -> tuple[list, list]:
    """(inputs, ids) of a shard's lines, parsed as ``bertrt predict`` parses them."""
    from ..runtime.jsonl import parse_record

    inputs, ids = [], []
    with open(shard.path, "rb") as fh:
        fh.seek(shard.start)
        data = fh.read(shard.end - shard.start)
    for i, raw in enumerate(data.splitlines()):
        line = raw.decode("utf-8")
        if not line.strip():
            continue
        number = shard.first_line + i
        item, given = parse_record(line, f"{shard.path} line {number}")
        inputs.append(item)
        ids.append(given if given is not None else (f"{shard.name}:{number}" if shard.name else number))
    return inputs, ids


def part_name(shard: int, fmt: str) -> str:
    return f"part-{shard:05d}.{FORMATS[fmt]}"


def write_part(rows: list[dict], path: Path, fmt: str) -> None:
    """Write a part file whole: to a unique temporary name, then rename (a retry's rename replaces it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # a Parquet column has one type: ids are written as strings (line numbers too)
            pq.write_table(pa.Table.from_pylist([{**r, "id": str(r["id"])} for r in rows]), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class ShardPredictor:
    """A Ray Data actor: one ``Runtime``; predicts whole shards and writes their part files."""

    def __init__(self, artifact: str, out_dir: str, fmt: str, runtime_options: dict):
        from ..runtime import Runtime

        self.runtime = Runtime(artifact, **runtime_options)
        self.out_dir, self.fmt = Path(out_dir), fmt

    def __call__(self, batch: dict) -> dict:
        counts = []
        for fields in zip(*(batch[k] for k in ("shard", "path", "start", "end", "first_line", "rows", "name"))):
            shard = Shard(*(v.item() if hasattr(v, "item") else v for v in fields))
            inputs, ids = read_shard(shard)
            rows = [{"id": i, **out} for i, out in zip(ids, self.runtime.predict(inputs))]
            write_part(rows, self.out_dir / part_name(shard.shard, self.fmt), self.fmt)
            counts.append(len(rows))
        return {"shard": list(batch["shard"]), "written": counts}


def count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def predict_dataset(artifact: str, input_path: Path, output: Path, *, concurrency: tuple[int, int] = (1, 2),
                    fmt: str = "jsonl", rows_per_task: int = 1000, num_cpus: float = 1.0, num_gpus: float = 0.0,
                    runtime_options: dict | None = None, force: bool = False, progress=None) -> int:
    """Predict every row of ``input_path`` into ``output`` (a folder of part files); returns the row count.
    Ray must be initialised (``ray.init``)."""
    import ray

    from ..atomic import atomic_dir

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {sorted(FORMATS)} (got {fmt})")
    low, high = concurrency
    if not 1 <= low <= high:
        raise InputError(f"--concurrency MIN,MAX needs 1 <= MIN <= MAX (got {low},{high})")
    shards = plan_shards(input_files(input_path), rows_per_task)
    with atomic_dir(output, force=force) as tmp:
        items = [vars(s) for s in shards]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
            ShardPredictor, batch_size=1, concurrency=(low, high), num_cpus=num_cpus, num_gpus=num_gpus,
            fn_constructor_kwargs={"artifact": str(artifact), "out_dir": str(tmp), "fmt": fmt,
                                   "runtime_options": runtime_options or {}})
        done: dict[int, int] = {}
        for row in ds.iter_rows():
            done[int(row["shard"])] = int(row["written"])
            if progress is not None:
                progress.update(int(row["written"]))
        for stale in Path(tmp).glob(".part-*"):  # the temporary file of a write whose actor was killed
            stale.unlink()
        check_parts(shards, done, Path(tmp), fmt)
    return sum(s.rows for s in shards)


def check_parts(shards: list[Shard], done: dict[int, int], folder: Path, fmt: str) -> None:
    """Every shard answered once and its part file holds exactly its rows; nothing else is in the folder."""
    missing = [s.shard for s in shards if s.shard not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) never completed: {missing[:10]}")
    for s in shards:
        path = folder / part_name(s.shard, fmt)
        if done[s.shard] != s.rows or count_rows(path, fmt) != s.rows:
            raise RuntimeError(f"{path.name}: {count_rows(path, fmt)} rows written for the {s.rows} of its shard")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in {part_name(s.shard, fmt) for s in shards})
    if extra:
        raise RuntimeError(f"unexpected files in the output: {extra[:10]}")
