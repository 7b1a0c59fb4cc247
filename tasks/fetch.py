"""fetch: get the three Omniglot zips, verify them, and place them in data/raw.

The source is a URL base (the authors' repository; an md5 from params for every file) or a
local folder whose SHA256SUMS lists every file. Every zip is also checked for integrity (CRC),
layout and size limits (siamese/zips.py), so a truncated, repacked or hostile file is an error
that names it. The zips land in data/raw only when all three are good, each under a temporary
name first, so a failure leaves the previous ones intact. Nothing is unpacked: index reads the
PNGs out of the zips, and DVC tracks three files instead of 32,460.

With dataset.source other than data/raw (your own images, which index reads in place) there
is nothing to fetch: data/raw, the stage's output, is an empty folder.
"""

import hashlib
import http.client
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from siamese import paths
from siamese.atomic import atomic_path
from siamese.config import DatasetConfig, FetchConfig
from siamese.errors import PipelineError
from siamese.zips import check_zip

CHUNK = 1 << 20


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


def verify_local(folder: Path, files: Sequence[str]) -> dict[str, Path]:
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


def fetch_url(base: str, files: Sequence[str], md5: dict[str, str], retries: int,
              folder: Path) -> dict[str, Path]:
    """Download each file into `folder` and check it against its md5 in fetch.md5."""
    located = {}
    for name in files:
        if name not in md5:
            raise PipelineError(f"params.yaml: fetch.md5 has no md5 for {name}; every "
                                "download must be verified")
        path = folder / name
        download(f"{base.rstrip('/')}/{name}", path, retries)
        actual = file_digest(path, "md5")
        if actual != md5[name].lower():
            raise PipelineError(
                f"{name}: md5 mismatch (fetch.md5 says {md5[name]}, download has {actual})"
            )
        located[name] = path
    return located


def install(zips: dict[str, Path], raw: Path) -> None:
    """Check every zip, then copy all of them into `raw`; nothing lands unless all are good."""
    for path in zips.values():
        check_zip(path)
    with ExitStack() as stack:
        for name, path in zips.items():
            tmp = stack.enter_context(atomic_path(raw / name))
            shutil.copyfile(path, tmp)


def run(params: dict[str, Any]) -> None:
    p = FetchConfig.parse(params)
    dataset = DatasetConfig.parse(params)
    if not dataset.omniglot:
        paths.RAW.mkdir(parents=True, exist_ok=True)
        print(f"fetch: nothing to fetch, dataset.source is {dataset.source} (read in place by "
              "index)")
        return
    source = p.source
    with tempfile.TemporaryDirectory(prefix="omniglot-download-") as folder:
        if is_url(source):
            zips = fetch_url(source, p.files, p.md5, p.retries, Path(folder))
        else:
            zips = verify_local(Path(source), p.files)
        install(zips, paths.RAW)
    print(f"fetch: {len(zips)} zips from {source} verified and copied into {paths.RAW}")
