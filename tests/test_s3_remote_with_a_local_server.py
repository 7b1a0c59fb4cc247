"""The DVC remote on S3, for real: moto's S3-compatible server on this machine, DVC's `s3`
extra; `siamese push`, then `siamese pull` into an empty cache and workspace restores every
output; a bucket that does not exist, or wrong credentials, are one line, and nothing is
lost."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from flows import remote
from siamese.errors import PipelineError

pytestmark = pytest.mark.slow  # an S3 server, DVC pushes and pulls

BIN = Path(sys.executable).parent
MAKE = ("import pathlib; p = pathlib.Path; p('pics').mkdir(exist_ok=True); "
        "p('out.txt').write_text('the output ' * 100); "
        "[p(f'pics/{i}.txt').write_text(f'picture {i} ' * 50) for i in range(3)]")


@pytest.fixture(scope="module")
def s3_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def project(tmp_path, s3_url, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def sh(*args: str) -> None:
        subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  make:\n    cmd: python -c \"{MAKE}\"\n    outs: [out.txt, pics]\n")
    sh("dvc", "repro", "-q")
    bucket = f"omniglot-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=bucket)
    sh("dvc", "remote", "add", "-q", "-d", "s3", f"s3://{bucket}/store")
    sh("dvc", "remote", "modify", "s3", "endpointurl", s3_url)
    return tmp_path


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in [root / "out.txt", *sorted((root / "pics").iterdir())]}


def test_push_then_pull_into_an_empty_cache_restores_every_output(project):
    built = contents(project)
    assert remote.push(project) == 5  # out.txt, three pictures and the folder's list
    shutil.rmtree(project / ".dvc/cache")
    (project / "out.txt").unlink()
    shutil.rmtree(project / "pics")
    assert remote.pull(project) == []
    assert contents(project) == built


def test_a_missing_bucket_is_one_line_and_nothing_is_lost(project):
    built = contents(project)
    subprocess.run([str(BIN / "dvc"), "remote", "modify", "s3", "url", "s3://no-such-bucket/x"],
                   cwd=project, check=True)
    for action in (remote.push, remote.pull):
        with pytest.raises(PipelineError) as raised:
            action(project)
        assert "\n" not in str(raised.value) and "no-such-bucket" in str(raised.value)
    assert contents(project) == built


def test_wrong_credentials_are_one_line_and_nothing_is_lost(project, monkeypatch):
    """moto's server checks signatures only under its IAM simulation: there, a key it never
    issued is refused, as AWS refuses it."""
    from moto.core.authorization import enable_iam_authentication

    built = contents(project)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    with enable_iam_authentication():
        for action in (remote.push, remote.pull):
            with pytest.raises(PipelineError) as raised:
                action(project)
            message = str(raised.value)
            assert "\n" not in message and message.startswith("DVC remote 's3' (s3://")
            assert "access denied (Forbidden): wrong credentials" in message
    assert contents(project) == built
