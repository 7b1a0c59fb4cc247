"""fetch: get the three Omniglot zips, verify them, unpack them into data/raw/omniglot.

The source is a URL base (the authors' repository; md5s from params) or a local folder whose
SHA256SUMS lists every file. Every zip is also checked for integrity (CRC) and structure, so a
truncated or repacked file is an error that names it. Unpacking goes to a temporary folder
that replaces data/raw/omniglot only when all three zips are in, so a failure leaves the
previous folder intact.
"""

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from tasks import paths
from tasks.atomic import atomic_path
from tasks.errors import PipelineError
from tasks.params import get, get_int, section

ZIPS = ("images_background.zip", "images_evaluation.zip", "all_runs.zip")
RUNS_ZIP = "all_runs.zip"
RUN_ENTRY = re.compile(r"^run\d{2}/")
CHUNK = 1 << 20


def fetch_params(params: dict[str, Any]) -> dict[str, Any]:
    """The checked `fetch` section, with the source resolved (OMNIGLOT_SOURCE wins if set)."""
    sec = section(params, "fetch")
    files = get(sec, "files", "fetch.files", list)
    if sorted(files) != sorted(ZIPS):
        raise PipelineError(f"params.yaml: fetch.files must be {list(ZIPS)}, got {files!r}")
    md5 = sec.get("md5") or {}
    if not isinstance(md5, dict) or not all(isinstance(v, str) for v in md5.values()):
        raise PipelineError("params.yaml: fetch.md5 must map file names to md5 strings")
    source = os.environ.get("OMNIGLOT_SOURCE") or get(sec, "source", "fetch.source", str)
    return {
        "source": source,
        "files": list(files),
        "md5": md5,
        "retries": get_int(sec, "retries", "fetch.retries", lo=0),
    }


def is_url(source: str) -> bool:
    return re.match(r"^(https?|file)://", source) is not None


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_sha256sums(folder: Path) -> dict[str, str]:
    """Parse `<sha256>  <name>` (or `<sha256> *<name>`) lines of folder/SHA256SUMS."""
    sums_file = folder / "SHA256SUMS"
    if not sums_file.is_file():
        raise PipelineError(f"{sums_file}: not found; a local source folder must have SHA256SUMS")
    sums = {}
    for number, line in enumerate(sums_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not match:
            raise PipelineError(f"{sums_file}:{number}: not a '<sha256>  <file>' line: {line!r}")
        sums[match.group(2).strip()] = match.group(1).lower()
    return sums


def verify_local(folder: Path, files: list[str]) -> dict[str, Path]:
    """Check each file against folder/SHA256SUMS; return name -> path."""
    if not folder.is_dir():
        raise PipelineError(f"fetch.source / OMNIGLOT_SOURCE: {folder} is not a folder or URL")
    sums = read_sha256sums(folder)
    located = {}
    for name in files:
        path = folder / name
        if name not in sums:
            raise PipelineError(f"{folder / 'SHA256SUMS'}: does not list {name}")
        if not path.is_file():
            raise PipelineError(f"{path}: not found in the source folder")
        actual = file_digest(path, "sha256")
        if actual != sums[name]:
            raise PipelineError(
                f"{path}: sha256 mismatch (SHA256SUMS says {sums[name]}, the file has {actual})"
            )
        located[name] = path
    return located


def download(url: str, dest: Path, retries: int, delay: float = 1.0) -> None:
    """Download `url` to `dest` with `retries` retries and exponential back-off.

    A body shorter than its Content-Length is an error (and retried), never a file.
    """
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
                expected = response.headers.get("Content-Length")
                shutil.copyfileobj(response, f, CHUNK)
            size = dest.stat().st_size
            if expected is not None and size != int(expected):
                raise PipelineError(f"{url}: truncated download ({size} of {expected} bytes)")
            return
        except (OSError, http.client.HTTPException, PipelineError) as e:
            if attempt == retries:
                raise PipelineError(
                    f"{url}: download failed after {retries + 1} attempt(s): {e}"
                ) from None
            time.sleep(delay * 2**attempt)


def fetch_url(base: str, files: list[str], md5: dict[str, str], retries: int,
              folder: Path) -> dict[str, Path]:
    """Download each file into `folder` and check the md5s known for it."""
    located = {}
    for name in files:
        path = folder / name
        download(f"{base.rstrip('/')}/{name}", path, retries)
        if name in md5:
            actual = file_digest(path, "md5")
            if actual != md5[name].lower():
                raise PipelineError(
                    f"{name}: md5 mismatch (fetch.md5 says {md5[name]}, download has {actual})"
                )
        located[name] = path
    return located


def safe_member(name: str, zip_path: Path) -> PurePosixPath:
    """The entry's path, refused if it would land outside the unpack folder."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(f"{zip_path.name}: entry {name!r} would unpack outside the folder")
    return member


def check_zip(zip_path: Path) -> list[zipfile.ZipInfo]:
    """Open the zip, check every entry's CRC and the expected top folder; return its entries."""
    name = zip_path.name
    try:
        with zipfile.ZipFile(zip_path) as zf:
            entries = zf.infolist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise PipelineError(f"{zip_path}: not a valid zip (truncated or corrupt?): {e}") from None
    if bad is not None:
        raise PipelineError(f"{zip_path}: entry {bad!r} fails its CRC check (corrupt zip)")
    top = name.removesuffix(".zip") + "/"
    for info in entries:
        member = safe_member(info.filename, zip_path)
        path = member.as_posix() + ("/" if info.is_dir() else "")
        ok = RUN_ENTRY.match(path) if name == RUNS_ZIP else path.startswith(top)
        if not ok:
            expected = "runNN/..." if name == RUNS_ZIP else top + "..."
            raise PipelineError(f"{zip_path}: unexpected entry {info.filename!r} ({expected})")
    if not any(not info.is_dir() for info in entries):
        raise PipelineError(f"{zip_path}: the zip holds no files")
    return entries


def unpack(zip_path: Path, entries: list[zipfile.ZipInfo], dest: Path) -> None:
    """Extract the checked entries of `zip_path` under `dest`."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in entries:
            target = dest / safe_member(info.filename, zip_path)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def unpack_all(zips: dict[str, Path], raw: Path) -> None:
    """Check all zips, then unpack them into `raw` atomically (all or nothing)."""
    checked = {name: check_zip(path) for name, path in zips.items()}
    with atomic_path(raw, is_dir=True) as tmp:
        for name, path in zips.items():
            dest = tmp / "all_runs" if name == RUNS_ZIP else tmp
            unpack(path, checked[name], dest)


def run(params: dict[str, Any]) -> None:
    p = fetch_params(params)
    source = p["source"]
    with tempfile.TemporaryDirectory(prefix="omniglot-download-") as folder:
        if is_url(source):
            zips = fetch_url(source, p["files"], p["md5"], p["retries"], Path(folder))
        else:
            zips = verify_local(Path(source), p["files"])
        unpack_all(zips, paths.RAW)
    print(f"fetch: {len(zips)} zips from {source} verified and unpacked into {paths.RAW}")
