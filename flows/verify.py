"""`siamese verify`: every output that dvc.lock records, re-hashed in the workspace, in DVC's
cache and (with `--remote`) in the default remote; each corrupt copy named and repaired.

DVC trusts what it has hashed once: a cache object is never read again, and a workspace file
whose inode, size and mtime are the ones in DVC's state database is taken as the hash it had.
So flipped bytes in the cache are served by `dvc checkout` as good, and a stage's rebuilt
output is replaced by the corrupt object on commit (the object "already exists"). Here every
byte is read again, against the md5 in its name.

What counts as corrupt, and so is repaired from a good copy (the cache's first):
- a cache or remote object whose bytes do not hash to its name; a remote object that is missing
  is restored too, and a folder's `.dir` listing is checked like any object before the files
  it names are;
- a workspace file only where DVC's state database still holds the md5 of dvc.lock for the
  file's present inode, size and mtime while its bytes hash otherwise: DVC itself calls it
  unchanged. A file changed since DVC hashed it (an edit not yet committed, a stage's
  interrupted work) is "modified", as `dvc status` says, and left alone; so is every copy of a
  `persist` output in the workspace (models/checkpoints/last.pt), which its stage resumes from.
Where no good copy is left, the corrupt ones are removed, so that the next `dvc repro` (or flow
run) rebuilds the output instead of serving them.

It never runs beside a stage: it holds DVC's repo lock (.dvc/tmp/lock) and DVC's rwlock
(.dvc/tmp/rwlock) for writing every output of dvc.yaml. `dvc repro` holds the repo lock except
while a stage's command runs, and through that command the rwlock on the stage's outputs
(writing) and dependencies (reading); so a running repro is met by one lock or the other, and
verify says so in one line. `siamese verify` also holds the checkout's run guard, which a flow
run holds from start to end (between its stages it holds no DVC lock). The flow runs this
before its stages.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from flows.remote import cached_outs, default_remote, locked_repo, open_remote
from siamese.errors import PipelineError

PLACES = ("workspace", "cache", "remote")
TEMPORARY = ".{name}.verify-{pid}"  # a repair's copy before its rename


@dataclass
class Copy:
    """One file of an output, in one place, checked."""

    output: str
    relpath: str  # within a folder output; "" for a file output or a folder's .dir listing
    md5: str  # the object's name: "<md5>.dir" for a folder's listing
    place: str  # workspace | cache | remote
    path: str
    state: str  # good | corrupt | modified | missing | unreadable
    persist: bool = False
    reason: str = ""  # why it could not be read

    @property
    def name(self) -> str:
        if self.md5.endswith(".dir"):
            return f"{self.output}/ (its .dir listing) in the {self.place}"
        return f"{self.output}{'/' + self.relpath if self.relpath else ''} in the {self.place}"


@dataclass(frozen=True)
class Action:
    """What verify did about one copy, as the one line it prints."""

    kind: str  # repaired | restored | removed | modified | kept | failed | unreadable | cleaned
    line: str

    def __str__(self) -> str:
        return self.line


def file_md5(path: Path | str, fs: Any = None) -> str | None:
    """md5 of the file's bytes (through the file system `fs` if given); None if it does not
    exist. Any other fault of reading it is an OSError."""
    digest = hashlib.md5()
    try:
        with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return digest.hexdigest()


def read_state(md5: str, path: str, fs: Any = None) -> tuple[str, str]:
    """(state, reason) of a stored object named `md5`: good, corrupt, missing or unreadable."""
    try:
        found = file_md5(path, fs)
    except OSError as e:
        return "unreadable", e.strerror or str(e)
    if found is None:
        return "missing", ""
    return ("good" if found == md5.removesuffix(".dir") else "corrupt"), ""


def workspace_state(repo: Any, md5: str, path: str) -> tuple[str, str]:
    """As read_state, but bytes that differ from `md5` are corruption only when DVC's state
    database holds `md5` for the file's present inode, size and mtime; otherwise the file was
    changed since DVC hashed it: modified."""
    state, reason = read_state(md5, path)
    if state != "corrupt":
        return state, reason
    _, hashed = repo.state.get(path, repo.fs)
    return ("corrupt" if hashed is not None and hashed.value == md5 else "modified"), ""


def store_copy(out: Any, relpath: str, md5: str, place: str, odb: Any) -> Copy:
    path = odb.oid_to_path(md5)
    state, reason = read_state(md5, path, odb.fs)
    return Copy(str(out), relpath, md5, place, path, state, reason=reason)


def workspace_copy(repo: Any, out: Any, relpath: str, md5: str) -> Copy:
    path = os.path.join(out.fs_path, relpath) if relpath else out.fs_path
    state, reason = workspace_state(repo, md5, path)
    return Copy(str(out), relpath, md5, "workspace", path, state, out.persist, reason)


def listing(copy: Copy, stores: dict[str, Any]) -> list[tuple[str, str]]:
    """(relpath, md5) of each file a good .dir listing names."""
    with stores[copy.place].fs.open(copy.path, "rb") as f:
        return [(entry["relpath"], entry["md5"]) for entry in json.loads(f.read())]


def check_output(repo: Any, out: Any, stores: dict[str, Any]) -> list[Copy]:
    """Every copy of every file of one cached output. A folder's .dir listing is checked in
    each store first; its files are those a good copy of it names (none, if none is good)."""
    oid = out.hash_info.value
    files, listings = [("", oid)], []
    if out.hash_info.isdir:
        listings = [store_copy(out, "", oid, place, odb) for place, odb in stores.items()]
        good = next((c for c in listings if c.state == "good"), None)
        files = listing(good, stores) if good is not None else []
    return listings + [copy for relpath, md5 in files for copy in (
        workspace_copy(repo, out, relpath, md5),
        *(store_copy(out, relpath, md5, place, odb) for place, odb in stores.items()))]


def check(repo: Any, remote_odb: Any = None) -> list[Copy]:
    """Every copy of every file of every cached output of dvc.lock, re-hashed."""
    stores = {"cache": repo.cache.local}
    if remote_odb is not None:
        stores["remote"] = remote_odb
    return [copy for out in cached_outs(repo) for copy in check_output(repo, out, stores)]


def repair(repo: Any, copies: list[Copy], remote_odb: Any = None) -> list[Action]:
    """Replace each corrupt copy (and a remote's missing one) from a good one of the same file,
    the cache's first; remove it where none is left. One action per copy that is not good."""
    by_file: dict[tuple[str, str, str], list[Copy]] = {}
    for copy in copies:
        by_file.setdefault((copy.output, copy.relpath, copy.md5), []).append(copy)
    actions = []
    for group in by_file.values():
        good = sorted((c for c in group if c.state == "good"),
                      key=lambda c: c.place != "cache")
        for copy in group:
            action = act(repo, copy, good[0] if good else None, remote_odb)
            if action is not None:
                actions.append(action)
    return actions


def act(repo: Any, copy: Copy, good: Copy | None, remote_odb: Any) -> Action | None:
    """What to do about one copy, done."""
    where = f"{copy.name} ({copy.path})"
    if copy.state == "modified":
        return Action("modified", f"modified {where}: changed since DVC hashed it, as `dvc "
                      f"status` says; left as it is ({keep_advice(copy)})")
    if copy.state == "corrupt" and copy.place == "workspace" and copy.persist:
        return Action("kept", f"corrupt {where}, left as it is: a persist output, never "
                      "replaced from the cache (its stage checks it before resuming)")
    replace = copy.state == "corrupt" or (copy.state == "missing" and copy.place == "remote")
    if not replace or (good is None and copy.state == "missing"):
        return None
    try:
        if good is None:
            remove(copy, remote_odb)
            return Action("removed", f"removed {where}: no good copy left, `dvc repro` rebuilds "
                          "it (or `siamese pull` restores it from a remote)")
        put(repo, good, copy, remote_odb)
    except OSError as e:
        return Action("failed", f"could not repair {where}: {e.strerror or e}; left as it was")
    if copy.state == "missing":
        return Action("restored", f"restored {where}, which lacked it, from the {good.place}'s "
                      "copy")
    return Action("repaired", f"repaired {where} from the {good.place}'s copy")


def keep_advice(copy: Copy) -> str:
    if copy.persist:
        return "a persist output, which its stage resumes from"
    return "`dvc commit` records it, `dvc checkout --force` restores dvc.lock's"


def put(repo: Any, good: Copy, copy: Copy, remote_odb: Any) -> None:
    """Copy `good` over `copy`: a remote's by DVC's own upload (a rename there), a local one by
    a rename of a temporary that is removed if the copy fails."""
    if copy.place == "remote":
        remote_odb.fs.put_file(good.path, copy.path)
        return
    target = Path(copy.path)
    tmp = target.with_name(TEMPORARY.format(name=target.name, pid=os.getpid()))
    try:
        if good.place == "remote":
            remote_odb.fs.get_file(good.path, str(tmp))
        else:
            shutil.copyfile(good.path, tmp)
        tmp.chmod(0o444 if copy.place == "cache" else 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if copy.place == "workspace":  # DVC need not hash it again: it is dvc.lock's md5
        from dvc_data.hashfile.hash_info import HashInfo

        repo.state.save(str(target), repo.fs, HashInfo("md5", copy.md5))


def remove(copy: Copy, remote_odb: Any) -> None:
    if copy.place == "remote":
        remote_odb.fs.rm_file(copy.path)
    else:
        Path(copy.path).unlink(missing_ok=True)


def unreadable(copies: list[Copy]) -> list[Action]:
    """One line per folder (a shard of the cache or the remote, an output's) that could not be
    read, however many of its files were to be checked."""
    by_folder: dict[tuple[str, str, str], int] = {}
    for copy in copies:
        if copy.state == "unreadable":
            key = (copy.place, os.path.dirname(copy.path), copy.reason)
            by_folder[key] = by_folder.get(key, 0) + 1
    return [Action("unreadable", f"cannot read {folder} (the {place}'s): {reason}; {n} file(s) "
                   "there not checked, fix it and rerun")
            for (place, folder, reason), n in by_folder.items()]


def remove_stale_temporaries(copies: list[Copy]) -> int:
    """Remove the temporaries that a verify killed mid-repair left beside the files it repairs
    (its pid no longer runs); how many."""
    folders = {os.path.dirname(c.path) for c in copies if c.place != "remote"}
    removed = 0
    for folder in folders:
        for tmp in Path(folder).glob(TEMPORARY.format(name="*", pid="*")):
            pid = tmp.name.rpartition("-")[2]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def running_stages(root: Path) -> str:
    """The live processes that DVC's rwlock records as reading or writing outputs."""
    try:
        lock = json.loads((root / ".dvc" / "tmp" / "rwlock").read_text())
    except (OSError, ValueError):
        return "another DVC process"
    infos = [*lock.get("write", {}).values(),
             *(info for infos in lock.get("read", {}).values() for info in infos)]
    held = {(info["pid"], info["cmd"]) for info in infos
            if info["pid"] != os.getpid() and psutil.pid_exists(info["pid"])}
    return ", ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(held)) or "another DVC process"


@contextmanager
def outputs_locked(root: Path, repo: Any) -> Iterator[None]:
    """DVC's rwlock for writing every output of dvc.yaml, as `dvc repro` takes it for a stage's
    outputs while the stage's command runs; a running stage is one PipelineError."""
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    outs = [out.fs_path for stage in repo.index.stages for out in stage.outs]
    hardlink = repo.config["core"].get("hardlink_lock", False)
    with ExitStack() as stack:
        try:
            stack.enter_context(rwlock(repo.tmp_dir, repo.fs, "siamese verify", [], outs,
                                       hardlink))
        except LockError:
            raise PipelineError(
                f"{root}: a DVC stage is running ({running_stages(root)}); verify never checks "
                "outputs while a stage writes them: rerun when it ends") from None
        yield


@contextmanager
def checkout_held(root: Path) -> Iterator[None]:
    """The checkout's run guard (flows/guard.py's `flock`), held while the block runs: between
    two stages of a flow run no DVC lock is held, and a verify holding DVC's lock then would
    fail the next stage's `dvc repro` at it. A run holding the guard is one PipelineError."""
    from flows import guard

    path = root / guard.LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not guard.try_lock(fd):
            raise PipelineError(
                f"{root}: a run holds this checkout ({guard.held_by(path)}); verify never runs "
                "beside one (the flow verifies before its stages): rerun when it ends")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (`siamese verify`)".encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def verify(root: Path | str = ".", with_remote: bool = False,
           hold_checkout: bool = False) -> tuple[list[Copy], list[Action]]:
    """Check and repair, under DVC's repo lock and its rwlock on every output, and with
    `hold_checkout` the checkout's run guard (a flow run, which holds it, calls this without);
    (the copies as found, what was done about those not good)."""
    root = Path(root).resolve()
    if not (root / "dvc.lock").exists():
        return [], []
    remote = default_remote(root) if with_remote else None
    if with_remote and remote is None:
        raise PipelineError("verify --remote: no DVC remote is configured (`dvc remote add -d`)")
    with ExitStack() as stack:
        if hold_checkout:
            stack.enter_context(checkout_held(root))
        repo = stack.enter_context(locked_repo(root))
        stack.enter_context(outputs_locked(root, repo))
        remote_odb = open_remote(repo, remote) if remote is not None else None
        copies = check(repo, remote_odb)
        stale = remove_stale_temporaries(copies)
        actions = repair(repo, copies, remote_odb) + unreadable(copies)
    if stale:
        actions.insert(0, Action("cleaned", f"removed {stale} temporaries that a killed verify "
                                 "left beside the files it was repairing"))
    return copies, actions


def summary(copies: list[Copy], actions: list[Action]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for copy in copies:
        place = counts.setdefault(copy.place, {})
        place[copy.state] = place.get(copy.state, 0) + 1
    parts = [f"{place}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
             for place, states in sorted(counts.items(), key=lambda c: PLACES.index(c[0]))]
    lines = [str(action) for action in actions]
    return "\n".join([*lines, f"verify: {'; '.join(parts) or 'nothing recorded in dvc.lock'}"])


FAULTS = {
    "removed": "{n} corrupt file(s) had no good copy left and were removed; `dvc repro` "
               "rebuilds them",
    "failed": "{n} repair(s) failed, the files left as they were (see above)",
    "unreadable": "{n} folder(s) could not be read (see above)",
}


def run(root: Path | str = ".", with_remote: bool = False) -> None:
    """`siamese verify [--remote]`: print what was found and done; an error when a corrupt file
    had no good copy left (its output is then rebuilt by the next `dvc repro`), a repair
    failed, or a folder could not be read."""
    copies, actions = verify(root, with_remote, hold_checkout=True)
    print(summary(copies, actions))
    faults = [template.format(n=n) for kind, template in FAULTS.items()
              if (n := sum(a.kind == kind for a in actions))]
    if faults:
        raise PipelineError("; ".join(faults))
