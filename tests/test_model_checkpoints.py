import pytest
import torch

from siamese.errors import PipelineError
from siamese.model import build_model, load_model, save_checkpoint

CPU_PATHS = {"cpu_paths": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE"}
META = {"step": 7, "valid_accuracy": 0.5, "params_digest": "abc", "cpu_paths": CPU_PATHS}


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = build_model("compact", 28, width=8, embedding=16)
    save_checkpoint(tmp_path / "m.pt", model, META)
    loaded, meta = load_model(tmp_path / "m.pt", "cpu")
    assert meta == {"arch": "compact", "image_size": 28, "step": 7, "valid_accuracy": 0.5,
                    "params_digest": "abc", "cpu_paths": CPU_PATHS,
                    "model_options": {"width": 8, "depth": 4, "embedding": 16, "init": "default",
                                      "head": "koch"}}
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x, x.flip(0)), model.eval()(x, x.flip(0)))
    assert not loaded.training


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="checkpoint not found"):
        load_model(tmp_path / "none.pt", "cpu")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("compact", 28, width=8), META)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(PipelineError, match="not a readable checkpoint"):
        load_model(path, "cpu")


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("compact", 28, width=8), META)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_options"]["width"] = 16  # says one net, holds another's weights
    torch.save(checkpoint, path)
    with pytest.raises(PipelineError, match="weights do not match arch 'compact'"):
        load_model(path, "cpu")
    checkpoint["arch"] = "koch"
    torch.save(checkpoint, path)
    with pytest.raises(PipelineError, match="m.pt: arch koch: image_size 28 is too small"):
        load_model(path, "cpu")


def test_a_flipped_byte_in_the_weights_is_a_clear_error_not_a_score(tmp_path):
    path = tmp_path / "m.pt"
    model = build_model("compact", 28, width=8)
    save_checkpoint(path, model, META)
    weights = model.state_dict()["features.0.weight"].numpy().tobytes()
    data = path.read_bytes()
    at = data.index(weights)  # torch stores tensors uncompressed: the bytes are there as is
    path.write_bytes(data[:at] + bytes(b ^ 0xFF for b in data[at:at + 64]) + data[at + 64:])
    with pytest.raises(PipelineError, match="do not match the sha256 recorded when it was saved"):
        load_model(path, "cpu")


def test_a_folder_given_as_the_model_says_what_it_found(tmp_path):
    with pytest.raises(PipelineError, match="not a regular file"):
        load_model(tmp_path, "cpu")
