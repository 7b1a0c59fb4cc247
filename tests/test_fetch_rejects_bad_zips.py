"""fetch: a bad source (truncated zip, escaping entry, zip bomb, wrong checksum, bad download)
is an error that names the file, exits 1, and leaves the previously fetched zips as they were."""

import hashlib
import http.server
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from siamese import paths
from siamese.zips import ZIPS
from tests.stagekit import mutated_source, run_stage, snapshot, write_params, write_sums


def assert_fails_cleanly(project: Path, source: Path | str, *expected: str) -> str:
    """Run fetch; it must exit 1 with `expected` in its message and change nothing in data/."""
    before = snapshot(project)
    result = run_stage(project, "fetch", source)
    assert result.returncode == 1, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project) == before
    leftovers = [p.name for p in (project / paths.RAW).iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    return result.stderr


def test_truncated_zip_is_named(synthetic_project, synthetic_source, tmp_path):
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    data = (source / "images_evaluation.zip").read_bytes()
    (source / "images_evaluation.zip").write_bytes(data[: len(data) // 2])
    write_sums(source)
    assert_fails_cleanly(synthetic_project, source, "images_evaluation.zip", "not a valid zip")


def test_corrupt_zip_entry_fails_its_crc(synthetic_project, synthetic_source, tmp_path):
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    data = bytearray((source / "all_runs.zip").read_bytes())
    data[200] ^= 0xFF  # inside the first entry's compressed bytes
    (source / "all_runs.zip").write_bytes(bytes(data))
    write_sums(source)
    assert_fails_cleanly(synthetic_project, source, "all_runs.zip")


def test_entry_escaping_the_folder_is_refused(synthetic_project, synthetic_source, tmp_path):
    def add_escape(entries: dict[str, bytes]) -> None:
        entries["images_background/../../escaped.txt"] = b"outside"

    source = mutated_source(tmp_path / "src", synthetic_source, "images_background.zip",
                            add_escape)
    message = assert_fails_cleanly(synthetic_project, source, "images_background.zip",
                                   "escaped.txt", "outside the folder")
    assert "unpack" in message
    assert not list(tmp_path.rglob("escaped.txt"))


def test_absolute_entry_is_refused(synthetic_project, synthetic_source, tmp_path):
    def add_absolute(entries: dict[str, bytes]) -> None:
        entries["/tmp/absolute.txt"] = b"outside"

    source = mutated_source(tmp_path / "src", synthetic_source, "all_runs.zip", add_absolute)
    assert_fails_cleanly(synthetic_project, source, "all_runs.zip", "/tmp/absolute.txt")


def test_entry_outside_the_zips_top_folder_is_refused(synthetic_project, synthetic_source,
                                                      tmp_path):
    def add_stray(entries: dict[str, bytes]) -> None:
        entries["images_evaluation_extra/readme.txt"] = b"?"

    source = mutated_source(tmp_path / "src", synthetic_source, "images_evaluation.zip",
                            add_stray)
    assert_fails_cleanly(synthetic_project, source, "images_evaluation.zip", "unexpected entry")


def test_zip_bomb_is_refused_before_it_inflates(synthetic_project, synthetic_source, tmp_path):
    """65 KB of zeros-in-deflate that would inflate to 64 MiB: refused from the zip's directory."""
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    with zipfile.ZipFile(source / "images_background.zip", "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images_background/Alpha/character01/bomb.bin", bytes(64 << 20))
    assert (source / "images_background.zip").stat().st_size < 2 << 20
    write_sums(source)
    assert_fails_cleanly(synthetic_project, source, "images_background.zip", "bomb.bin",
                         "over the limit")


def test_highly_compressed_entry_is_refused(synthetic_project, synthetic_source, tmp_path):
    """Small, but inflating 1,000 times: no Omniglot entry does that (the most is 6.6)."""
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    with zipfile.ZipFile(source / "all_runs.zip", "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("run01/padding.txt", bytes(500_000))
    write_sums(source)
    assert_fails_cleanly(synthetic_project, source, "all_runs.zip", "run01/padding.txt",
                         "inflates", "times")


def test_wrong_checksum_is_named(synthetic_project, synthetic_source, tmp_path):
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    sums = (source / "SHA256SUMS").read_text()
    good = hashlib.sha256((source / "all_runs.zip").read_bytes()).hexdigest()
    (source / "SHA256SUMS").write_text(sums.replace(good, "0" * 64))
    assert_fails_cleanly(synthetic_project, source, "all_runs.zip", "sha256 mismatch")


def test_sha256sums_must_list_every_file(synthetic_project, synthetic_source, tmp_path):
    source = shutil.copytree(synthetic_source, tmp_path / "src")
    lines = (source / "SHA256SUMS").read_text().splitlines()
    kept = [line for line in lines if not line.endswith("images_background.zip")]
    (source / "SHA256SUMS").write_text("\n".join(kept) + "\n")
    assert_fails_cleanly(synthetic_project, source, "SHA256SUMS", "images_background.zip")
    (source / "SHA256SUMS").unlink()
    assert_fails_cleanly(synthetic_project, source, "SHA256SUMS", "not found")


class Server(http.server.ThreadingHTTPServer):
    """Serves a folder; with `truncate`, it announces each file's size but sends half of it."""

    def __init__(self, folder: Path, truncate: bool):
        self.folder, self.truncate, self.requests = folder, truncate, 0
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests += 1
        path = self.server.folder / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.server.truncate else data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(synthetic_source) -> Iterator:
    servers = []

    def start(truncate: bool) -> Server:
        server = Server(synthetic_source, truncate)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def url_params(project: Path, md5: dict[str, str], retries: int = 0) -> None:
    write_params(project, {"fetch": {"md5": md5, "retries": retries}})


def synthetic_md5(source: Path) -> dict[str, str]:
    return {name: hashlib.md5((source / name).read_bytes()).hexdigest() for name in ZIPS}


def test_download_from_url_checks_md5_and_keeps_the_zips(synthetic_project, synthetic_source,
                                                          serve):
    server = serve(truncate=False)
    url = f"http://127.0.0.1:{server.server_port}"
    url_params(synthetic_project, synthetic_md5(synthetic_source))
    shutil.rmtree(synthetic_project / paths.RAW)
    result = run_stage(synthetic_project, "fetch", url)
    assert result.returncode == 0, result.stderr
    raw = synthetic_project / paths.RAW
    assert sorted(p.name for p in raw.iterdir()) == sorted(ZIPS)
    for name in ZIPS:
        assert (raw / name).read_bytes() == (synthetic_source / name).read_bytes()


def test_download_needs_an_md5_for_every_zip(synthetic_project, synthetic_source, serve):
    server = serve(truncate=False)
    md5 = synthetic_md5(synthetic_source)
    del md5["all_runs.zip"]
    url_params(synthetic_project, md5)
    assert_fails_cleanly(synthetic_project, f"http://127.0.0.1:{server.server_port}",
                         "fetch.md5", "all_runs.zip")
    md5["all_runs.zip"] = "0" * 32
    url_params(synthetic_project, md5)
    assert_fails_cleanly(synthetic_project, f"http://127.0.0.1:{server.server_port}",
                         "all_runs.zip", "md5 mismatch")


def test_download_md5_mismatch_is_named(synthetic_project, synthetic_source, serve):
    server = serve(truncate=False)
    md5 = {**synthetic_md5(synthetic_source), "images_evaluation.zip": "f" * 32}
    url_params(synthetic_project, md5)
    assert_fails_cleanly(synthetic_project, f"http://127.0.0.1:{server.server_port}",
                         "images_evaluation.zip", "md5 mismatch")


def test_truncated_download_is_retried_then_named(synthetic_project, synthetic_source, serve):
    server = serve(truncate=True)
    url_params(synthetic_project, synthetic_md5(synthetic_source), retries=1)
    assert_fails_cleanly(synthetic_project, f"http://127.0.0.1:{server.server_port}",
                         "images_background.zip", "2 attempt(s)")
    assert server.requests == 2
