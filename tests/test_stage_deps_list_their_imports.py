"""dvc.yaml must list, as deps of each stage, every project .py file the stage imports: a
change to any of them reruns the stage. And train's resume key hashes exactly that code."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("siamese", "tasks", "tools", "flows")
# Prints the project files (package __init__ files aside) in sys.modules after the import.
PROBE = f"""
import importlib, json, sys
from pathlib import Path
importlib.import_module(sys.argv[1])
root = Path.cwd().resolve()
print(json.dumps(sorted(
    Path(m.__file__).resolve().relative_to(root).as_posix()
    for name, m in list(sys.modules.items())
    if name.split(".")[0] in {PACKAGES!r} and getattr(m, "__file__", None)
    and not m.__file__.endswith("__init__.py"))))
"""


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict, suffixes: tuple[str, ...] = (".py",)) -> set[str]:
    return {d for d in stage["deps"] if isinstance(d, str) and d.endswith(suffixes)}


def imported_files(modules: list[str]) -> dict[str, set[str]]:
    """module -> the project files importing it loads (each in a fresh interpreter, at once)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": ""}
    children = {m: subprocess.Popen([sys.executable, "-c", PROBE, m], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for m in modules}
    found = {}
    for module, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, f"import {module} failed:\n{err}"
        found[module] = set(json.loads(out))
    return found


def test_every_stage_lists_the_project_files_it_imports():
    listed = {name: code_deps(stage) for name, stage in stages().items()}
    imported = imported_files([f"tasks.{name}" for name in listed])
    for name, deps in listed.items():
        assert imported[f"tasks.{name}"] == deps, (
            f"dvc.yaml stage {name}: missing {sorted(imported[f'tasks.{name}'] - deps)}, "
            f"not imported {sorted(deps - imported[f'tasks.{name}'])}")


def test_the_resume_key_hashes_the_code_files_train_depends_on():
    from siamese.checkpoints import CODE

    hashed = [Path(p).resolve().relative_to(ROOT).as_posix() for p in CODE]
    assert len(hashed) == len(set(hashed))
    assert set(hashed) == code_deps(stages()["train"], (".py", ".c"))


def test_a_stage_that_multiplies_by_the_kernel_depends_on_its_source():
    for name, stage in stages().items():
        if "siamese/gemm.py" in stage["deps"]:
            assert "siamese/_gemm.c" in stage["deps"], f"dvc.yaml stage {name}"
