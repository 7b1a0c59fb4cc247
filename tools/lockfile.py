"""The locked install: pip's installation report as hashed requirements files.

`make lock` asks pip's resolver once what `pip install '.[dev]' setuptools pip` would install
(`pip install --dry-run --ignore-installed --report`, seconds: pip-compile took over 15
minutes here) and this module writes each selected distribution as `name==version` with the
sha256 of the very file pip chose: requirements.lock (all of them) and
requirements-build.lock (pip and setuptools alone, installed first so that the rest, and one
sdist among them, builds with locked tools). `make setup` installs them with
`--require-hashes`. Standard library only: it runs before anything is installed.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

LOCK = Path("requirements.lock")
BUILD_LOCK = Path("requirements-build.lock")
BUILD_TOOLS = ("pip", "setuptools")


def pins(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of each distribution pip would download, sorted by name; the
    project itself (a local folder) is left out."""
    found = []
    for item in report["install"]:
        meta, source = item["metadata"], item["download_info"]
        if "dir_info" in source:
            continue
        digest = source.get("archive_info", {}).get("hashes", {}).get("sha256")
        if digest is None:
            raise SystemExit(f"lockfile: no sha256 for {meta['name']} ({source['url']})")
        found.append((meta["name"].lower(), meta["version"], digest))
    return sorted(found)


def render(found: list[tuple[str, str, str]], environment: dict[str, str]) -> str:
    """A requirements file in pip's hash-checking form, headed by where it was resolved."""
    where = (f"{environment['implementation_name']} {environment['python_full_version']}, "
             f"{environment['sys_platform']} {environment['platform_machine']}")
    head = [f"# Written by `make lock` (tools/lockfile.py) on {where}: do not edit.",
            "# Installed by `make setup` with pip's --require-hashes."]
    body = [f"{name}=={version} \\\n    --hash=sha256:{digest}" for name, version, digest in found]
    return "\n".join(head + body) + "\n"


def write_locks(report: dict[str, Any], folder: Path) -> list[Path]:
    """requirements.lock and requirements-build.lock in `folder`; their paths."""
    found = pins(report)
    build = [pin for pin in found if pin[0] in BUILD_TOOLS]
    if len(build) != len(BUILD_TOOLS):
        raise SystemExit(f"lockfile: the report must hold {' and '.join(BUILD_TOOLS)}")
    written = []
    for path, chosen in ((LOCK, found), (BUILD_LOCK, build)):
        (folder / path).write_text(render(chosen, report["environment"]))
        written.append(folder / path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lockfile", description=__doc__)
    parser.add_argument("report", type=Path, help="pip's --report JSON")
    parser.add_argument("--folder", type=Path, default=Path("."), help="where to write")
    args = parser.parse_args(argv)
    for path in write_locks(json.loads(args.report.read_text()), args.folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
