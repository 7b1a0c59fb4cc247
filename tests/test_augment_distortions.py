import torch

from siamese.augment import distort, random_affine


def stroke_batch() -> torch.Tensor:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0
    return x


def test_distortions_are_reproducible_from_the_seed_and_keep_the_ink():
    x = stroke_batch()
    a = distort(x, torch.Generator().manual_seed(1), 0.5)
    b = distort(x, torch.Generator().manual_seed(1), 0.5)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)
    ink = a.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ink.min() > 0.6 and ink.max() < 1.5  # scale 0.8-1.2 each way, nothing lost off-edge


def test_probability_zero_is_the_identity_and_components_stay_in_koch_ranges():
    x = stroke_batch()
    torch.testing.assert_close(distort(x, torch.Generator().manual_seed(1), 0.0), x)
    theta = random_affine(torch.Generator().manual_seed(2), 10_000, 1.0)
    assert theta[:, :, 2].abs().max() <= 4 / 105 + 1e-6  # +-2 px at 105 px, normalised
    det = torch.linalg.det(theta[:, :, :2])  # rotation 1, shear 0.91-1.09, scale 0.64-1.44
    assert det.min() > 0.64 * 0.91 - 1e-6 and det.max() < 1.44 * 1.09 + 1e-6
