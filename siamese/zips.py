"""The three Omniglot zips: their layout, the checks on their entries, and reading them.

fetch checks each zip before it lands in data/raw; index and the tools read the PNGs straight
out of the zips, so nothing is unpacked for DVC to track. A manifest's `path` is the path
inside the zip for the two image zips (`images_background/<alphabet>/<character>/<file>`),
and `all_runs/<entry>` for Lake's runs, whose zip has no top folder.

Every entry is refused before it is inflated if its name would leave the zip's folder or if
it is larger than MAX_ENTRY_BYTES or inflates more than MAX_RATIO times (a zip bomb); zipfile
itself never inflates past an entry's declared size and checks its CRC as it reads.
"""

import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from siamese.errors import PipelineError

BACKGROUND_ZIP = "images_background.zip"
EVALUATION_ZIP = "images_evaluation.zip"
RUNS_ZIP = "all_runs.zip"
ZIPS = (BACKGROUND_ZIP, EVALUATION_ZIP, RUNS_ZIP)
RUNS_PREFIX = "all_runs/"
RUN_ENTRY = re.compile(r"^run\d{2}/")
# Omniglot's entries are under 1 KB and barely compress (PNGs; the runs' labels 6.6x).
MAX_ENTRY_BYTES = 1 << 20
MAX_RATIO = 100
MAX_ENTRIES = 100_000


def manifest_path(zip_name: str, entry: str) -> str:
    """The path a manifest records for `entry` of `zip_name`."""
    return RUNS_PREFIX + entry if zip_name == RUNS_ZIP else entry


def locate(path: str) -> tuple[str, str]:
    """(zip name, entry) of a manifest path: the inverse of manifest_path."""
    if path.startswith(RUNS_PREFIX):
        return RUNS_ZIP, path.removeprefix(RUNS_PREFIX)
    top = path.split("/", 1)[0]
    if f"{top}.zip" not in (BACKGROUND_ZIP, EVALUATION_ZIP):
        raise PipelineError(f"{path}: not a path inside the Omniglot zips")
    return f"{top}.zip", path


def safe_member(name: str, zip_path: Path) -> PurePosixPath:
    """The entry's path, refused if it would land outside the zip's folder when unpacked."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(f"{zip_path}: entry {name!r} would unpack outside the folder")
    return member


def check_entry(info: zipfile.ZipInfo, zip_path: Path, omniglot: bool) -> None:
    """Name, layout (of Omniglot's zips) and size limits of one entry, from the zip's directory
    (nothing inflated)."""
    member = safe_member(info.filename, zip_path).as_posix() + ("/" if info.is_dir() else "")
    if not omniglot:
        ok, expected = True, ""
    elif zip_path.name == RUNS_ZIP:
        ok, expected = RUN_ENTRY.match(member) is not None, "runNN/..."
    else:
        top = zip_path.name.removesuffix(".zip") + "/"
        ok, expected = member.startswith(top), top + "..."
    if not ok:
        raise PipelineError(f"{zip_path}: unexpected entry {info.filename!r} ({expected})")
    if info.file_size > MAX_ENTRY_BYTES:
        raise PipelineError(f"{zip_path}: entry {info.filename!r} inflates to {info.file_size} "
                            f"bytes, over the limit of {MAX_ENTRY_BYTES} (a zip bomb?)")
    if info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise PipelineError(f"{zip_path}: entry {info.filename!r} inflates "
                            f"{info.file_size / max(info.compress_size, 1):.0f} times, over the "
                            f"limit of {MAX_RATIO} (a zip bomb?)")


@contextmanager
def open_zip(zip_path: Path,
             omniglot: bool = True) -> Iterator[tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]]:
    """The open zip and its file entries (folders left out), each checked by check_entry
    (omniglot False: a user's zip of images, whose layout index checks)."""
    if not zip_path.is_file():
        raise PipelineError(f"{zip_path}: not found; run the fetch stage first")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise PipelineError(f"{zip_path}: not a valid zip (truncated or corrupt?): {e}") from None
    with zf:
        entries = zf.infolist()
        if len(entries) > MAX_ENTRIES:
            raise PipelineError(f"{zip_path}: {len(entries)} entries, over the limit of "
                                f"{MAX_ENTRIES}")
        for info in entries:
            check_entry(info, zip_path, omniglot)
        files = [info for info in entries if not info.is_dir()]
        if not files:
            raise PipelineError(f"{zip_path}: the zip holds no files")
        yield zf, files


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path) -> bytes:
    """The entry's bytes; a corrupt entry (CRC, bad data) names the zip and the entry."""
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise PipelineError(f"{zip_path}: entry {info.filename!r} is corrupt: {e}") from None


def check_zip(zip_path: Path) -> int:
    """Check every entry of the zip (layout, limits, CRC); return how many files it holds."""
    with open_zip(zip_path) as (zf, files):
        for info in files:
            read_entry(zf, info, zip_path)
        return len(files)


def read_files(raw: Path, paths: list[str]) -> list[bytes]:
    """The bytes of manifest `paths` (see manifest_path), read from the zips in `raw`."""
    wanted: dict[str, list[tuple[int, str]]] = {}
    for i, path in enumerate(paths):
        zip_name, entry = locate(path)
        wanted.setdefault(zip_name, []).append((i, entry))
    found: list[bytes] = [b""] * len(paths)
    for zip_name, items in wanted.items():
        zip_path = raw / zip_name
        with open_zip(zip_path) as (zf, files):
            by_name = {info.filename: info for info in files}
            for i, entry in items:
                if entry not in by_name:
                    raise PipelineError(f"{zip_path}: no entry {entry!r}")
                found[i] = read_entry(zf, by_name[entry], zip_path)
    return found
