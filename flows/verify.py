"""`siamese verify`: every output that dvc.lock records, re-hashed in the workspace, in DVC's
cache and (with `--remote`) in the default remote; each corrupt copy named and repaired.

DVC trusts what it has hashed once: a cache object is never read again, and a workspace file
whose size and mtime are unchanged is taken as the hash it had. So flipped bytes in the cache
are served by `dvc checkout` as good, and a stage's rebuilt output is replaced by the corrupt
object on commit (the object "already exists"). Here every byte is read again, against the md5
in its name: a corrupt copy is replaced from a good one (the workspace's, the cache's or the
remote's); where no good copy is left, the corrupt ones are removed, so the next `dvc repro`
(or flow run) rebuilds the output instead of serving them. The flow runs this before its
stages.
"""

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.remote import default_remote, locked_repo, open_remote
from siamese.errors import PipelineError


@dataclass
class Copy:
    """One file of an output, in one place, checked."""

    output: str
    relpath: str  # within a folder output; "" for a file output
    md5: str
    place: str  # workspace | cache | remote
    path: str
    state: str  # good | corrupt | missing


def file_md5(path: Path | str, fs: Any = None) -> str | None:
    """md5 of the file's bytes (through the remote's file system `fs` if given); None if it
    does not exist."""
    digest = hashlib.md5()
    try:
        with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return digest.hexdigest()


def state_of(md5: str, path: Path | str, fs: Any = None) -> str:
    found = file_md5(path, fs)
    return "missing" if found is None else "good" if found == md5 else "corrupt"


def files_of(out: Any, cache: Any) -> list[tuple[str, str]]:
    """(relpath, md5) of each file of a cached output; a folder's list comes from its .dir
    object, checked first (a corrupt list is removed and the folder reported whole)."""
    oid = out.hash_info.value
    if not out.hash_info.isdir:
        return [("", oid)]
    listing = Path(cache.oid_to_path(oid))
    if state_of(oid.removesuffix(".dir"), listing) != "good":
        return [("", oid)]
    return [(e["relpath"], e["md5"]) for e in json.loads(listing.read_text())]


def place_path(out: Any, relpath: str, md5: str, place: str, odb: Any) -> str:
    if place == "workspace":
        return str(Path(out.fs_path) / relpath) if relpath else str(out.fs_path)
    return odb.oid_to_path(md5)


def check(repo: Any, remote_odb: Any = None) -> list[Copy]:
    """Every copy of every file of every cached output of dvc.lock, re-hashed."""
    places = {"workspace": None, "cache": repo.cache.local}
    if remote_odb is not None:
        places["remote"] = remote_odb
    copies = []
    for stage in repo.index.stages:
        for out in stage.outs:
            if not (out.use_cache and out.hash_info and out.hash_info.value):
                continue
            for relpath, md5 in files_of(out, repo.cache.local):
                for place, odb in places.items():
                    if relpath == "" and md5.endswith(".dir") and place == "workspace":
                        continue  # a folder whose list is unreadable: its files are unknown
                    path = place_path(out, relpath, md5, place, odb)
                    fs = odb.fs if place == "remote" else None
                    copies.append(Copy(str(out), relpath, md5, place, path,
                                       state_of(md5.removesuffix(".dir"), path, fs)))
    return copies


def repair(copies: list[Copy], remote_odb: Any = None) -> list[str]:
    """Replace each corrupt copy from a good one of the same file; remove it where none is
    left. One line per copy touched."""
    lines = []
    by_file: dict[tuple[str, str], list[Copy]] = {}
    for copy in copies:
        by_file.setdefault((copy.output, copy.relpath or copy.md5), []).append(copy)
    for group in by_file.values():
        good = next((c for c in group if c.state == "good"), None)
        for copy in (c for c in group if c.state == "corrupt"):
            name = f"{copy.output}{'/' + copy.relpath if copy.relpath else ''} in the {copy.place}"
            if good is not None:
                put(good, copy, remote_odb)
                lines.append(f"repaired {name} ({copy.path}) from the {good.place}'s copy")
            else:
                remove(copy, remote_odb)
                lines.append(f"removed {name} ({copy.path}): no good copy left, `dvc repro` "
                             "rebuilds it (or `siamese pull` restores it from a remote)")
    return lines


def put(good: Copy, copy: Copy, remote_odb: Any) -> None:
    """Copy `good` over `copy` (a local one by a rename, never half-written)."""
    if copy.place == "remote":
        remote_odb.fs.put_file(good.path, copy.path)
        return
    target = Path(copy.path)
    tmp = target.with_name(f".{target.name}.verify-{os.getpid()}")
    if good.place == "remote":
        remote_odb.fs.get_file(good.path, str(tmp))
    else:
        shutil.copyfile(good.path, tmp)
    tmp.chmod(0o444 if copy.place == "cache" else 0o644)
    os.replace(tmp, target)


def remove(copy: Copy, remote_odb: Any) -> None:
    if copy.place == "remote":
        remote_odb.fs.rm_file(copy.path)
    else:
        Path(copy.path).unlink(missing_ok=True)


def verify(root: Path | str = ".", with_remote: bool = False) -> tuple[list[Copy], list[str]]:
    """Check and repair, under DVC's lock; (the copies as found, what was repaired)."""
    root = Path(root).resolve()
    if not (root / "dvc.lock").exists():
        return [], []
    remote = default_remote(root) if with_remote else None
    if with_remote and remote is None:
        raise PipelineError("verify --remote: no DVC remote is configured (`dvc remote add -d`)")
    with locked_repo(root) as repo:
        remote_odb = open_remote(repo, remote) if remote is not None else None
        copies = check(repo, remote_odb)
        return copies, repair(copies, remote_odb)


def summary(copies: list[Copy], repairs: list[str]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for copy in copies:
        place = counts.setdefault(copy.place, {})
        place[copy.state] = place.get(copy.state, 0) + 1
    parts = [f"{place}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
             for place, states in counts.items()]
    return "\n".join([*repairs, f"verify: {'; '.join(parts) or 'nothing recorded in dvc.lock'}"])


def run(root: Path | str = ".", with_remote: bool = False) -> None:
    """`siamese verify [--remote]`: print what was found and repaired; an error when a corrupt
    file had no good copy left (its output is then rebuilt by the next `dvc repro`)."""
    copies, repairs = verify(root, with_remote)
    print(summary(copies, repairs))
    lost = [line for line in repairs if line.startswith("removed ")]
    if lost:
        raise PipelineError(f"{len(lost)} corrupt file(s) had no good copy left and were "
                            "removed; `dvc repro` rebuilds them")
