"""`siamese classify`: user images of any size and format, and clear errors for bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siamese.errors import PipelineError
from tests.classifykit import save_model, stroke_image
from tools import classify
from tools.cli import main


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    out = {"model": save_model(tmp_path / "model.pt")}
    for kind, name in enumerate(("cross.png", "ring.png", "bar.png")):
        out[name] = tmp_path / name
        Image.fromarray(stroke_image(kind, 105, 105)).convert("1").save(out[name])
    # queries: other sizes, formats, colours and aspect ratios
    out["ring.jpg"] = tmp_path / "ring.jpg"
    Image.fromarray(stroke_image(1, 300, 300)).convert("RGB").save(out["ring.jpg"], quality=90)
    out["bar-inverted.bmp"] = tmp_path / "bar-inverted.bmp"
    Image.fromarray(255 - stroke_image(2, 210, 210)).save(out["bar-inverted.bmp"])
    out["cross-wide.png"] = tmp_path / "cross-wide.png"
    wide = np.full((120, 200), 255, dtype=np.uint8)
    wide[:, 40:160] = stroke_image(0, 120, 120)
    Image.fromarray(wide).convert("LA").save(out["cross-wide.png"])
    out["ring-transparent.png"] = tmp_path / "ring-transparent.png"
    ink = stroke_image(1, 105, 105) == 0  # black strokes; the rest transparent black
    rgba = np.zeros((105, 105, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(ink, 255, 0)
    Image.fromarray(rgba, mode="RGBA").save(out["ring-transparent.png"])
    return out


def test_each_query_gets_its_own_character_whatever_the_format(files, capsys):
    support = [files["cross.png"], files["ring.png"], files["bar.png"]]
    query = [files["ring.jpg"], files["bar-inverted.bmp"], files["cross-wide.png"],
             files["ring-transparent.png"]]
    argv = ["classify", "--model", str(files["model"]), "--support", *map(str, support),
            "--query", *map(str, query)]
    assert main(argv) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query,prediction,score,runner_up,runner_up_score"
    rows = [line.split(",") for line in lines[1:]]
    assert [(Path(r[0]).name, Path(r[1]).name) for r in rows] == [
        ("ring.jpg", "ring.png"), ("bar-inverted.bmp", "bar.png"), ("cross-wide.png", "cross.png"),
        ("ring-transparent.png", "ring.png")]
    assert all(0 < float(r[2]) <= 1 and float(r[4]) <= float(r[2]) for r in rows)


def test_empty_support_set_is_refused(files):
    with pytest.raises(PipelineError, match="support set is empty"):
        classify.run(files["model"], [], [files["ring.jpg"]])


def test_unreadable_query_image_is_named(files, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(PipelineError, match=r"broken\.png: not a readable image"):
        classify.run(files["model"], [files["cross.png"]], [files["ring.jpg"], broken])
    argv = ["classify", "--model", str(files["model"]), "--support", str(files["cross.png"]),
            "--query", str(tmp_path / "missing.png")]
    assert main(argv) == 1
    assert "missing.png: file not found" in capsys.readouterr().err


def test_missing_or_corrupt_checkpoint_is_named(files, tmp_path):
    args = ([files["cross.png"]], [files["ring.jpg"]])
    with pytest.raises(PipelineError, match=r"absent\.pt: checkpoint not found"):
        classify.run(tmp_path / "absent.pt", *args)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(files["model"].read_bytes()[:300])
    with pytest.raises(PipelineError, match=r"corrupt\.pt: not a readable checkpoint"):
        classify.run(corrupt, *args)


def test_checkpoint_of_another_architecture_is_named(files, tmp_path):
    checkpoint = torch.load(files["model"], weights_only=True)
    checkpoint["model_options"] = {**checkpoint["model_options"], "width": 16}
    other = tmp_path / "other-arch.pt"
    torch.save(checkpoint, other)
    with pytest.raises(PipelineError, match=r"other-arch\.pt: weights do not match arch"):
        classify.run(other, [files["cross.png"]], [files["ring.jpg"]])


@pytest.mark.parametrize("device, message", [
    ("tpu", "'tpu' is not a device"),
    ("cuda:7", "'cuda:7' requested but"),
])
def test_unusable_device_is_named_not_blamed_on_the_checkpoint(files, device, message):
    with pytest.raises(PipelineError, match=rf"siamese classify --device: {message}"):
        classify.run(files["model"], [files["cross.png"]], [files["ring.jpg"]], device=device)


def test_transparent_background_reads_as_paper(files):
    from siamese.images import read_image_file

    ink = stroke_image(1, 105, 105) == 0
    assert (read_image_file(files["ring-transparent.png"]) == ink).all()
