import re

import pytest

from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.model import build_model
from siamese.objectives import make_optimizer
from tests.training import params_with


@pytest.mark.parametrize(("edit", "message"), [
    ({"lr": -0.01}, "train.lr must be > 0, got -0.01"),
    ({"lr": 0}, "train.lr must be > 0"),
    ({"arch": "resnet"}, "train.arch must be one of koch, compact; got 'resnet'"),
    ({"objective": "triplets"}, "train.objective must be one of"),
    ({"steps": 0}, "train.steps must be >= 1"),
    ({"device": "tpu"}, "train.device must be auto, cpu or cuda"),
    ({"augment_probability": 1.5}, "train.augment_probability must be <= 1"),
    ({"episode_characters": 1}, "train.episode_characters must be >= 2"),
    ({"weight_decay": "lots"}, "train.weight_decay has the wrong type"),
    ({"weight_decay": ["1e-4", True]}, "train.weight_decay[0] has the wrong type: '1e-4'"),
    ({"weight_decay": [1e-4, True]}, "train.weight_decay[1] must be a number, got True"),
    ({"weight_decay": ["abc"]}, "train.weight_decay[0] has the wrong type: 'abc'"),
    ({"weight_decay": [1e-4, -1]}, "train.weight_decay[1] must be >= 0, got -1"),
    ({"cpu_paths": "avx512"}, "train.cpu_paths must be one of avx2, native; got 'avx512'"),
])
def test_bad_train_params_are_clear_errors(edit, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        TrainConfig.parse(params_with(**edit))


def test_per_layer_l2_needs_one_value_per_layer():
    cfg = TrainConfig.parse(params_with(arch="koch", image_size=105, weight_decay=[0.0, 0.1]))
    with pytest.raises(PipelineError, match="lists 2 values; arch koch has 6 conv/linear"):
        make_optimizer(cfg, build_model("koch", 105))


def test_a_typo_in_a_key_or_a_section_is_refused_with_the_nearest_name():
    params = params_with(lrr=0.1)
    with pytest.raises(PipelineError, match=re.escape(
            "params.yaml: train.lrr is not a parameter (did you mean train.lr?)")):
        TrainConfig.parse(params)
    params = {**params_with(), "trian": {"lr": 0.1}}
    with pytest.raises(PipelineError, match=re.escape(
            "params.yaml: section 'trian' is not a section of the pipeline (did you mean "
            "train?)")):
        TrainConfig.parse(params)
