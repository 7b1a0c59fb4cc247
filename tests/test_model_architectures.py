import pytest
import torch

from siamese.errors import PipelineError
from siamese.model import build_model


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_koch_net_has_the_papers_parameter_count_at_105px():
    assert count(build_model("koch", 105)) == 38_951_745


def test_koch_init_draws_the_papers_distributions():
    torch.manual_seed(0)
    model = build_model("koch", 105, init="koch")
    conv, fc = model.features[0], model.features[-2]
    assert abs(conv.weight.std().item() - 0.01) < 0.001
    assert abs(fc.weight.std().item() - 0.2) < 0.01
    assert abs(fc.bias.mean().item() - 0.5) < 0.01


def test_compact_net_embeds_and_scores_with_broadcasting():
    model = build_model("compact", 28, width=16, embedding=32).eval()
    x = torch.rand(5, 1, 28, 28)
    emb = model.embed(x)
    assert emb.shape == (5, 32)
    all_pairs = model.score(emb[:, None, :], emb[None, :, :])
    assert all_pairs.shape == (5, 5)
    torch.testing.assert_close(torch.diagonal(all_pairs), model(x, x))
    torch.testing.assert_close(all_pairs, all_pairs.T)  # |a - b| is symmetric


@pytest.mark.parametrize(("arch", "size", "options", "message"), [
    ("resnet", 28, {}, "unknown architecture 'resnet'"),
    ("koch", 28, {}, "image_size 28 is too small"),
    ("compact", 28, {"colour": 3}, "unknown model options ['colour']"),
    ("compact", 28, {"init": "xavier"}, "init must be one of"),
])
def test_bad_architectures_are_clear_errors(arch, size, options, message):
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_model(arch, size, **options)
