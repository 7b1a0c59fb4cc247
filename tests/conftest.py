"""The suite's fixtures and hooks; the plain helpers they use live in the helper modules
(tests/stagekit.py, tests/synthetic.py, tests/flowkit.py), which tests import directly."""

import os
import shutil
from pathlib import Path

import pytest

from tests.flowkit import prefect_home
from tests.owndata import render_glyphs
from tests.stagekit import SHARED_DATA, build_data
from tests.synthetic import SYNTHETIC_PARAMS, make_source

# Fixtures that make a test slow: the real data set (built once per session), a Prefect server.
SLOW_FIXTURES = {"real_data_root", "prefect_session", "prefect_api"}


# The tests whose outcomes the summary reports: the evidence, run by run, that one numerical
# path holds across CPUs (issue 18).
EVIDENCE = {
    "test_cpu_paths_pin_the_weights.py::test_determinism_probe": "determinism probe vs the "
                                                                  "pinned sha256s",
    "test_cpu_paths_pin_the_weights.py::test_an_emulated_amd": "emulated AMD vs Intel CPU",
}
outcomes: dict[str, list[str]] = {what: [] for what in EVIDENCE.values()}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for test, what in EVIDENCE.items():
        if test in report.nodeid and (report.when == "call" or report.outcome != "passed"):
            outcomes[what].append(report.outcome)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter) -> None:
    """The machine the suite ran on, and whether it computed the pinned weights."""
    from siamese import cpu

    info = {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in cpu.read_cpuinfo().splitlines())}
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    evidence = "; ".join(f"{what}: {', '.join(seen) or 'not run'}"
                         for what, seen in outcomes.items())
    terminalreporter.write_line(
        f"machine: {cpu.cpu_model()} ({family}; {' '.join(cpu.cpu_flags())}); {evidence}")

# The tests that need a tool `.ci/run` installs: under CI (CI=true) their skip where the tool
# is missing is a failure, so that a green CI run has run them (issue 29).
NEEDED_IN_CI = {"test_cpu_paths_pin_the_weights.py::test_an_emulated_amd": "qemu-x86_64"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI=true, a skip of a NEEDED_IN_CI test whose tool is missing fails it."""
    report = (yield).get_result()
    if not report.skipped or os.environ.get("CI") != "true":
        return
    for test, tool in NEEDED_IN_CI.items():
        if test in item.nodeid and shutil.which(tool) is None:
            report.outcome = "failed"
            report.longrepr = (f"CI=true and {tool} is missing: this test would be skipped, "
                               "and CI must run it (.ci/run installs qemu-user)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the real data or a Prefect server is slow: `make check` leaves it out."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Omniglot zips, read-only (../shared/data/omniglot, or $OMNIGLOT_SHARED)."""
    if not (SHARED_DATA / "SHA256SUMS").exists():
        pytest.fail(f"real Omniglot not found at {SHARED_DATA}; set OMNIGLOT_SHARED")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A small synthetic Omniglot source folder (zips + SHA256SUMS), built once per session."""
    return make_source(tmp_path_factory.mktemp("synthetic-omniglot"))


@pytest.fixture(scope="session")
def glyph_source(tmp_path_factory) -> Path:
    """A second real data set, GROUP/CLASS/IMAGE: glyphs of the machine's fonts (tools/glyphs.py
    and tests/owndata.py), built once per session; read-only for tests."""
    return render_glyphs(tmp_path_factory.mktemp("glyphs") / "glyphs")


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory, shared_data) -> Path:
    """A project folder where `siamese fetch` ... `siamese trials` ran on the real Omniglot.

    Built once per session with the project's params.yaml; read-only for tests (e.g.
    `real_data_root / siamese.paths.PIXELS`). Copy it before changing anything.
    """
    return build_data(tmp_path_factory.mktemp("real-data"), shared_data, None)


@pytest.fixture(scope="session")
def synthetic_data_root(tmp_path_factory, synthetic_source) -> Path:
    """A project folder with the data stages run on the synthetic source (SYNTHETIC_PARAMS)."""
    return build_data(tmp_path_factory.mktemp("synthetic-data"), synthetic_source,
                      SYNTHETIC_PARAMS)


@pytest.fixture
def synthetic_project(tmp_path, synthetic_data_root) -> Path:
    """A private copy of `synthetic_data_root`, for tests that break its inputs or params."""
    return Path(shutil.copytree(synthetic_data_root, tmp_path / "project", symlinks=True))


@pytest.fixture(scope="session")
def prefect_session():
    """Prefect in this process (see tests/flowkit.py's prefect_home); at the end of the session,
    its temporary server stops while pytest still shows logs (at exit Prefect would log to a
    closed stream). A test or fixture that imports prefect, or code that does, asks for it
    first, by name or with request.getfixturevalue("prefect_session")."""
    prefect_home()
    yield
    from prefect.logging.handlers import APILogHandler
    from prefect.server.api.server import SubprocessASGIServer

    APILogHandler().flush()  # the last logs go to the server before it stops
    SubprocessASGIServer().stop()


@pytest.fixture(scope="session")
def prefect_api(prefect_session) -> str:
    """The API URL of the session's temporary Prefect server, started if it is not yet: for
    `siamese` and `prefect` commands run as subprocesses, which would each start their own
    (~20 s)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one instance that in-process clients use
    server.start()
    return server.api_url


@pytest.fixture(scope="session")
def server(prefect_api) -> str:
    """A started Prefect server's API URL: the session's temporary one (prefect_api), which
    the in-process flows use too, rather than a `prefect server start` of a test module's own
    (~20 s to start)."""
    return prefect_api
