"""Atomic writes: every artifact is written under a temporary name, then renamed into place.

A file is replaced by one rename, so a run killed halfway leaves the previous file or the new
one, never half of one. A folder cannot be swapped by one rename: the previous one is first
renamed aside (`.NAME.old-PID-*`), the new one renamed in, then the old one removed; killed
between the two renames, the previous folder is still whole, under that name beside the target.
A stage that writes several files replaces each atomically, not all of them at once.

Temporaries carry the writer's process id (`.NAME.tmp-PID-*`; no dot after NAME's own,
since torch.save names its archive's folder after the file name up to its last dot): the next
write of NAME removes those of processes no longer running, so a killed run leaves nothing
behind for long. A disk that fills during a write is one line naming the file, the bytes needed
and the bytes free, and the previous file stays.
"""

import errno
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from siamese.errors import PipelineError

NEEDED = re.compile(r"(\d+) bytes")


@contextmanager
def atomic_path(target: Path | str, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`.

    On any exception the temporary file or folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
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
    except OSError as e:
        if e.errno == errno.ENOSPC or "free space" in str(e):
            raise disk_full(target, e) from None
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def remove_stale(target: Path) -> None:
    """Remove the temporaries of `target` that processes no longer running left (a folder's
    `.old-` copy only while `target` itself exists: until then it is the only copy)."""
    own = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(?:(\d+)-)?")
    for path in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        match = own.match(path.name)
        if not match or match[2] and running(int(match[2])) \
                or match[1] == "old" and not target.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_full(target: Path, error: OSError) -> PipelineError:
    needed = NEEDED.search(str(error))
    free = shutil.disk_usage(target.parent).free
    return PipelineError(f"{target}: disk full, not written (needs "
                         f"{needed[1] + ' bytes' if needed else 'more space'}, {free} bytes free "
                         f"on its file system); the previous file is kept, free space and rerun")


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` in place of folder `target`, never deleting `target` before."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
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
