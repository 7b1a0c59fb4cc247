"""The project's default DVC remote: pull before reproducing, push after, with errors that name
the remote, the object or DVC's lock.

No remote is the normal case on a fresh machine: pull and push then say so in one line and do
nothing. DVC's own commands are too lenient to report faults: `dvc pull` with a remote whose
path is wrong says "Everything is up to date" and exits 0 (and `dvc repro --pull` rebuilds
everything), and a corrupt object in a local-folder remote is deleted there during the fetch
and then reported as merely missing. So `pull` checks the remote first, notes which of the
objects it needs the remote holds, fetches, and checks out only the outputs whose objects all
arrived: an output the remote lacks is named and left to its stage, and the workspace never
loses a file to a failed or partial pull.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siamese.errors import PipelineError

LOCK = Path(".dvc") / "tmp" / "lock"


@dataclass(frozen=True)
class Remote:
    name: str
    url: str

    def __str__(self) -> str:
        return f"DVC remote '{self.name}' ({self.url})"


def default_remote(root: Path) -> Remote | None:
    """The default remote of the DVC project at `root` (core.remote), or None."""
    from dvc.config import Config
    from dvc.exceptions import DvcException

    try:
        config = Config(dvc_dir=str(root / ".dvc"), local_dvc_dir=str(root / ".dvc"))
    except DvcException as e:
        raise PipelineError(f"{root / '.dvc' / 'config'}: DVC cannot read it: {e}") from None
    name = config["core"].get("remote")
    if not name:
        return None
    if name not in config["remote"]:
        raise PipelineError(f"DVC's default remote '{name}' is not defined (`dvc remote list`)")
    return Remote(name, str(config["remote"][name]["url"]))


def configured(root: Path, action: str) -> Remote | None:
    """The default remote to `action` with; None, after one line saying so, when there is none."""
    remote = default_remote(root)
    if remote is None:
        print(f"{action}: skipped, no DVC remote is configured (`dvc remote add -d NAME URL`)")
    return remote


@contextmanager
def quiet_dvc() -> Iterator[None]:
    """DVC's warnings are multi-line lists of hashes; this module says what matters itself."""
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def lock_holder(root: Path) -> str:
    """The process that holds DVC's lock, from the pid zc.lockfile writes into it."""
    try:
        pid = (root / LOCK).read_text().strip()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return f"pid {pid}: {' '.join(raw.split())[:120]}"
    except (OSError, ValueError):
        return "another process"


@contextmanager
def locked_repo(root: Path) -> Iterator[Any]:
    """dvc.repo.Repo at `root`, holding DVC's lock (.dvc/tmp/lock) throughout; a lock held
    elsewhere, or any other fault DVC reports, is a one-line PipelineError."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    try:
        with Repo(str(root)) as repo, quiet_dvc(), ExitStack() as stack:
            try:
                stack.enter_context(lock_repo(repo))
            except LockError:
                raise PipelineError(
                    f"DVC's lock {root / LOCK} is held by {lock_holder(root)}; wait for that DVC "
                    "command to end, then rerun"
                ) from None
            yield repo
    except DvcException as e:
        raise PipelineError(f"dvc: {' '.join(str(e).split())}") from None


def open_remote(repo: Any, remote: Remote, write: bool = False) -> Any:
    """The remote's object store, once it is known to answer: a PipelineError naming the
    remote when it is unreachable, its folder is wrong, or this user may not use it."""
    try:
        store = repo.cloud.get_remote(remote.name)
        exists = store.fs.exists(store.path)
    except Exception as e:  # noqa: BLE001 - any fault of the remote's file system
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, PermissionError):  # s3fs, gcsfs: the server refused these credentials
            raise PipelineError(f"{remote}: access denied ({reason}): wrong credentials, or "
                                "none that may use it (the remote's own or the environment's, "
                                "e.g. AWS_ACCESS_KEY_ID)") from None
        raise PipelineError(f"{remote}: unreachable: {reason}") from None
    if store.fs.protocol == "local":
        check_folder(Path(store.path), remote, write)
    elif store.fs.protocol in ("http", "https"):
        probe_http(remote)
    elif not exists:
        check_bucket(store, remote)
        if not write:
            print(f"{remote}: empty (nothing pushed yet)")
    return store.odb


def check_bucket(store: Any, remote: Remote) -> None:
    """An object store's folder that does not exist yet is normal; its bucket must."""
    bucket = store.path.split("/", 1)[0]
    try:
        found = store.fs.exists(bucket)
    except Exception as e:  # noqa: BLE001 - any fault of the remote's file system
        found, reason = False, str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    else:
        reason = "it does not exist (create it, or fix the remote's url)"
    if not found:
        raise PipelineError(f"{remote}: bucket '{bucket}': {reason}")


def probe_http(remote: Remote) -> None:
    """DVC's HTTP file system reports a server that does not answer as missing files."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(remote.url, method="HEAD"), timeout=20):
            return
    except urllib.error.HTTPError:
        return  # it answers, if only with an error status
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise PipelineError(f"{remote}: unreachable: {reason}") from None


def check_folder(path: Path, remote: Remote, write: bool) -> None:
    """A local-folder remote: it must exist (a wrong path is not an empty remote) and be usable."""
    if not path.exists():
        if write and path.parent.is_dir() and os.access(path.parent, os.W_OK):
            return  # DVC creates it on the first push
        raise PipelineError(f"{remote}: wrong path: {path} does not exist")
    if not path.is_dir():
        raise PipelineError(f"{remote}: wrong path: {path} is not a folder")
    mode = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if not os.access(path, mode):
        raise PipelineError(f"{remote}: no permission to {'write' if write else 'read'} {path}")


def cached_outs(repo: Any) -> list[Any]:
    """The outputs that dvc.lock records and DVC caches: what a remote can restore."""
    return [out for stage in repo.index.stages for out in stage.outs
            if out.use_cache and out.hash_info and out.hash_info.value]


def describe(out: Any) -> str:
    return f"{out} (md5 {out.hash_info.value[:12]})"


def absent_files(out: Any) -> list[str]:
    """The objects of a directory output that the local cache still lacks."""
    tree = out.get_obj()
    if tree is None:
        return []
    return [oid.value[:12] for _, _, oid in tree if not out.cache.exists(oid.value)]


def sort_lacking(lacking: list[Any], held: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(missing, corrupt): each output the fetch did not bring, described. An object the
    remote held before the fetch that did not arrive failed DVC's hash check: corrupt."""
    missing, corrupt = [], []
    for out in lacking:
        files = absent_files(out) if out.hash_info.isdir else []
        if files:
            missing.append(f"{describe(out)}: {len(files)} of its files missing or corrupt "
                           f"({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})")
        elif held[out.hash_info.value]:
            corrupt.append(describe(out))
        else:
            missing.append(describe(out))
    return missing, corrupt


def fetch(repo: Any, remote: Remote) -> None:
    """Objects the remote lacks are not a failure here (sort_lacking names them); objects it
    holds that did not come are: a connection or permission fault."""
    from dvc.exceptions import DownloadError

    try:
        repo.fetch(remote=remote.name, run_cache=True)
    except DownloadError as e:
        raise PipelineError(f"{remote}: {e.amount} files failed to download (unreachable, or no "
                            "permission); nothing was checked out, rerun when it answers") from None


def remove_partial_objects(root: Path) -> int:
    """Remove the partial objects (`.*.tmp`) that a DVC write stopped by a full disk or a kill
    left in the project's own cache, under DVC's lock, so no DVC command of this project is
    writing them; how many. They take the space a retry needs, and DVC never removes them. A
    cache outside the project (`cache.dir`, shared with others) is left alone."""
    cache = (root / ".dvc" / "cache").resolve()
    if not cache.is_dir():
        return 0
    with locked_repo(root) as repo:
        if not Path(repo.cache.local.path).resolve().is_relative_to(cache):
            return 0
        partial = [p for p in cache.rglob(".*.tmp") if p.is_file()]
        size = sum(p.stat().st_size for p in partial)
        for path in partial:
            path.unlink(missing_ok=True)
    if partial:
        print(f"dvc cache: removed {len(partial)} partial objects ({size:,} bytes) that an "
              f"interrupted write left in {cache}")
    return len(partial)


def pull(root: Path | str = ".") -> list[str]:
    """`siamese pull`: restore every output of dvc.lock that the default remote holds, and the
    run cache; return the outputs it lacks (their stages rebuild them). No remote: nothing.
    First, the partial objects of an interrupted write leave the cache."""
    root = Path(root).resolve()
    remove_partial_objects(root)
    remote = configured(root, "dvc pull")
    if remote is None:
        return []
    with locked_repo(root) as repo:
        odb = open_remote(repo, remote)
        outs = cached_outs(repo)
        wanted = [out for out in outs if out.changed_cache()]
        held = {out.hash_info.value: odb.exists(out.hash_info.value) for out in wanted}
        fetch(repo, remote)
        lacking = [out for out in wanted if out.changed_cache()]
        missing, corrupt = sort_lacking(lacking, held)
        if corrupt:
            raise PipelineError(
                f"{remote}: corrupt object: {'; '.join(corrupt)}: its content does not match its "
                "hash, so nothing was checked out. DVC drops such a copy from a local-folder "
                "remote (elsewhere delete it); rerun to rebuild it"
            )
        checkout(repo, [out for out in outs if out not in lacking])
    if missing:
        print(f"dvc pull: {remote} lacks {'; '.join(missing)}; their stages will rebuild them")
    print(f"dvc pull: {len(wanted) - len(lacking)} outputs restored from {remote}, "
          f"{len(outs) - len(wanted)} were in the local cache")
    return [str(out) for out in lacking]


def checkout(repo: Any, outs: list[Any]) -> None:
    """Link the outputs whose objects are all in the local cache into the workspace."""
    from dvc.exceptions import DvcException

    if not outs:
        return
    try:
        repo.checkout(targets=[out.fs_path for out in outs])
    except DvcException as e:
        raise PipelineError(f"dvc checkout after the pull: {e}") from None


def push(root: Path | str = ".") -> int:
    """`siamese push`: send every output of dvc.lock and the run cache to the default remote;
    return how many files went. No remote: nothing."""
    from dvc.exceptions import UploadError

    root = Path(root).resolve()
    remote = configured(root, "dvc push")
    if remote is None:
        return 0
    with locked_repo(root) as repo:
        open_remote(repo, remote, write=True)
        try:
            count = repo.push(remote=remote.name, run_cache=True)
        except UploadError as e:
            raise PipelineError(f"{remote}: {e.amount} files failed to upload (unreachable, or no "
                                "permission); rerun when it answers") from None
    print(f"dvc push: {count} files sent to {remote}")
    return count
