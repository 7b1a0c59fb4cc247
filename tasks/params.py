"""params: every section of params.yaml checked, before any other stage of dvc.yaml runs.

DVC removes a stage's outputs just before it runs the stage's command, so a stage that finds
a typo in its own section has already lost its outputs (and outputs git tracks, such as
reports/audit*, are not in DVC's cache to restore). This stage depends on params.yaml as a
whole file and every other stage depends on its output, so any edit of params.yaml runs it
first, and a misspelled key or section, an unknown section or a bad value stops `dvc repro`
here, before DVC removes anything else. Its output's bytes are the same for every valid
params.yaml: the later stages rerun only for the parameters they read.
"""

from typing import Any

from siamese import paths
from siamese.atomic import write_text
from siamese.config import check_sections

CHECKED = "params.yaml: every section checked (siamese/config.py)\n"


def run(params: dict[str, Any]) -> None:
    check_sections(params)
    write_text(CHECKED, paths.PARAMS_CHECKED)
    print(CHECKED, end="")
