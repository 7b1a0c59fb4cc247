import pytest
import torch
from torch import nn

import tasks.train
from siamese import paths
from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.objectives import WeightAverage
from tests.training import params_with, train_project, weights


def test_the_average_follows_parameters_and_batch_norm_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert not any(p.requires_grad for p in average.net.parameters())
    net(torch.randn(8, 3))  # moves the running statistics, counts a batch
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    average.update(net)
    now = net.state_dict()
    for k, v in average.net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * now[k])
            assert not torch.equal(v, now[k])
        else:
            assert torch.equal(v, now[k])  # num_batches_tracked: copied
    net[0].weight.grad = torch.ones_like(net[0].weight)
    assert average.net[0].weight.grad is None  # a copy, not the network itself


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1])
def test_the_decay_is_below_one_and_not_negative(decay):
    with pytest.raises(PipelineError, match="train.ema must be"):
        TrainConfig.parse(params_with(ema=decay))


def test_with_ema_the_average_is_validated_and_written(tmp_path, synthetic_data_root,
                                                        monkeypatch):
    params = train_project(tmp_path, synthetic_data_root, steps=12, eval_every=6,
                           episode_alphabets=2, episode_characters=4, threads=1, ema=0.8)
    monkeypatch.chdir(tmp_path)
    validated = []

    def accuracy(net, data, device):  # every evaluation is the best so far
        validated.append({k: v.clone() for k, v in net.state_dict().items()})
        return len(validated) / 10

    monkeypatch.setattr(tasks.train, "valid_accuracy", accuracy)
    tasks.train.run(params, device="cpu")
    last = torch.load(tasks.train.LAST, weights_only=True)
    average, raw = last["ema"], last["model"]
    assert len(validated) == 2
    assert all(torch.equal(validated[-1][k], average[k]) for k in average)
    assert not all(torch.equal(average[k], raw[k]) for k in raw)
    written = weights(paths.MODEL)  # the best (last) average, its head's bias calibrated
    assert all(torch.equal(written[k], average[k]) for k in average if k != "head.bias")
