"""Atomic writes: every artifact is written under a temporary name, then renamed into place.

A file is replaced by one rename, so a run killed halfway leaves the previous file or the new
one, never half of one. A folder cannot be swapped by one rename: the previous one is first
renamed aside (`.NAME.old-*`), the new one renamed in, then the old one removed; killed between
the two renames, the previous folder is still whole, under that name beside the target.
A stage that writes several files replaces each atomically, not all of them at once.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(target: Path | str, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`.

    On any exception the temporary file or folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o755 if is_dir else 0o644)
        if is_dir and target.exists():
            replace_dir(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` in place of folder `target`, never deleting `target` before."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def write_with(target: Path | str, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and move the result onto `target` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_parquet(
    df: pd.DataFrame, target: Path | str, metadata: dict[str, str] | None = None
) -> Path:
    """Write `df` as Parquet, byte-identical for identical frames (no index, fixed options)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    return write_with(target, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_json(obj: Any, target: Path | str) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return write_with(target, lambda tmp: tmp.write_text(text))


def write_text(text: str, target: Path | str) -> Path:
    return write_with(target, lambda tmp: tmp.write_text(text))


def write_npy(array: np.ndarray, target: Path | str) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return write_with(target, save)
