"""Atomic writes: every artifact is written under a temporary name, then renamed into place.

A file is replaced by one rename, so a run killed halfway leaves the previous file or the new
one, never half of one. A folder cannot be swapped by one rename: the previous one is first
renamed aside (`.NAME.old-PID-*`), the new one renamed in, then the old one removed; killed
between the two renames, the previous folder is still whole, under that name beside the target.
A stage that writes several files replaces each atomically, not all of them at once.

Temporaries carry the writer's process id (`.NAME.tmp-PID-*`; no dot after NAME's own,
since torch.save names its archive's folder after the file name up to its last dot): the next
write of NAME removes those of processes no longer running, so a killed run leaves nothing
behind for long. A disk that fills during a write (or while the temporary is made) is one
line naming the file, the bytes needed and the bytes free once the temporary is gone, and what
is kept: the previous file, or none (`dvc repro` removes a stage's outputs before it runs it).
torch.save's errors do not say why a write failed ("unexpected pos ..."): a write that fails
without ENOSPC is taken for one that found the disk full when the temporary's file system
refuses a probe write too.
"""

import errno
import glob
import io
import json
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from siamese.errors import PipelineError

PROBE_BYTES = 1 << 16  # more than a block: a full file system refuses some of it


Needed = int | Callable[[], int] | None  # the bytes a write takes, or how to count them


@contextmanager
def atomic_path(target: Path | str, *, is_dir: bool = False,
                needed: Needed = None) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`.

    On any exception the temporary file or folder is removed and `target` is untouched; a
    full disk is a PipelineError that says so (`needed`: the bytes the write takes, if known).
    """
    target = Path(target)
    try:
        tmp = make_temporary(target, is_dir)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(target, needed, 0) from None
        raise
    try:
        yield tmp
        tmp.chmod(0o755 if is_dir else 0o644)
        if is_dir and target.exists():
            replace_dir(tmp, target)
        else:
            os.replace(tmp, target)
    except Exception as e:
        written = size_of(tmp)  # before a probe adds to it
        if not (isinstance(e, OSError) and e.errno == errno.ENOSPC or refuses_writes(tmp)):
            raise
        release_frames(e)
        remove(tmp)
        raise disk_full(target, needed, written) from None
    finally:
        remove(tmp)


def release_frames(error: BaseException | None) -> None:
    """Clear the finished frames of `error` and the errors it arose from: a writer still open
    there (torch.save's) would hold the temporary's space after its removal."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__context__


def make_temporary(target: Path, is_dir: bool) -> Path:
    """An empty file or folder beside `target`, named for this process (see the docstring)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    os.close(fd)
    return Path(name)


def refuses_writes(tmp: Path) -> bool:
    """Whether appending PROBE_BYTES to the temporary file fails for want of space."""
    if tmp.is_dir() or not tmp.exists():
        return False
    try:
        with open(tmp, "ab", buffering=0) as f:
            for _ in range(2):  # the first write may only fill the last block's slack
                f.write(bytes(PROBE_BYTES))
            os.fsync(f.fileno())
    except OSError as e:
        return e.errno == errno.ENOSPC
    return False


def size_of(tmp: Path) -> int:
    """The bytes a temporary file or folder holds (what fit on the disk)."""
    if tmp.is_dir():
        return sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return tmp.stat().st_size if tmp.exists() else 0


def remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists() or tmp.is_symlink():
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


def disk_full(target: Path, needed: Needed, written: int) -> PipelineError:
    """The one line of a write that found the disk full; `written`: the bytes that fit."""
    free = shutil.disk_usage(target.parent).free
    needed = needed() if callable(needed) else needed
    size = f"{needed} bytes" if needed is not None else f"more than {written} bytes"
    return PipelineError(f"{target}: disk full, not written (needs {size}, {free} bytes free on "
                         f"its file system); {what_is_kept(target)}; free space and rerun")


def what_is_kept(target: Path) -> str:
    kind = "folder" if target.is_dir() else "file"
    if target.exists():
        return f"the previous {kind} is kept"
    if os.environ.get("DVC_STAGE"):
        return "no previous one is kept (dvc repro removes a stage's outputs before running it)"
    return "there was no previous one"


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` in place of folder `target`, never deleting `target` before."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def write_with(target: Path | str, write: Callable[[Path], Any], needed: Needed = None) -> Path:
    """Call `write(tmp_path)` and move the result onto `target` atomically."""
    with atomic_path(target, needed=needed) as tmp:
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
    def size() -> int:  # counted in memory, only once the disk is full
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.tell()

    return write_with(target, lambda tmp: pq.write_table(table, tmp, compression="zstd"), size)


def write_json(obj: Any, target: Path | str) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", target)


def write_text(text: str, target: Path | str) -> Path:
    data = text.encode()
    return write_with(target, lambda tmp: tmp.write_bytes(data), needed=len(data))


def write_npy(array: np.ndarray, target: Path | str) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    header = io.BytesIO()  # np.save's header, then the array's bytes
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return write_with(target, save, needed=header.tell() + array.nbytes)
