import math

import pytest
import torch

from perceiver_edu import FourierPositionEncoding, LearnedPositionEncoding, fourier_features


def reference_features(shape, num_bands, max_resolution):
    """The paper's formula evaluated point by point with Python's math module."""
    import itertools
    rows = []
    for index in itertools.product(*[range(n) for n in shape]):
        x = [-1.0 + 2.0 * i / (n - 1) if n > 1 else -1.0 for i, n in zip(index, shape)]
        sines, cosines = [], []
        for d, mu in enumerate(max_resolution):
            for k in range(num_bands):
                f = 1.0 + k * (mu / 2 - 1.0) / (num_bands - 1) if num_bands > 1 else 1.0
                sines.append(math.sin(math.pi * f * x[d]))
                cosines.append(math.cos(math.pi * f * x[d]))
        rows.append(x + sines + cosines)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("shape,bands,mu", [((7,), 4, (7,)), ((5, 6), 3, (10, 12)), ((3, 4, 5), 2, (3, 4, 5)),
                                            ((32, 32), 16, (32, 32))])
def test_fourier_features_match_the_formula(shape, bands, mu):
    got = fourier_features(shape, bands, mu, dtype=torch.float64)
    assert got.shape == (math.prod(shape), len(shape) * (2 * bands + 1))
    torch.testing.assert_close(got, reference_features(shape, bands, mu), atol=1e-9, rtol=0)


def test_fourier_defaults_and_extremes():
    feats = fourier_features((9, 9), num_bands=4)  # mu defaults to the grid size
    torch.testing.assert_close(feats, fourier_features((9, 9), 4, 9))
    # corners are at -1 and +1 exactly, and rows are in row-major grid order
    assert feats[0, :2].tolist() == [-1.0, -1.0] and feats[-1, :2].tolist() == [1.0, 1.0]
    assert feats[1, :2].tolist() == [-1.0, -0.75]
    assert feats.abs().max() <= 1.0


def test_fourier_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"^max_resolution has 1 entries but the input has 2 axes \(4, 4\)$"):
        fourier_features((4, 4), 2, (4,))
    with pytest.raises(ValueError, match="num_bands"):
        fourier_features((4, 4), 0)
    for shape in ((), (4, 0)):
        with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive sizes"):
            fourier_features(shape, 2)


def test_fourier_accepts_the_smallest_valid_arguments():
    single = fourier_features((1, 3), num_bands=1)  # one row, one band: f_1 = 1
    assert single.shape == (3, 2 * 3)
    torch.testing.assert_close(single[:, :2], torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0]]))


def test_no_warnings_from_building_the_features():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch.meshgrid without `indexing` warns in every notebook
        fourier_features((4, 5), 3)


def test_position_encoding_modules():
    fourier = FourierPositionEncoding((4, 5), 3)
    assert fourier().shape == (20, 14) and fourier.dim == 14
    assert not list(fourier.parameters())
    learned = LearnedPositionEncoding(20, 8)
    values = learned()
    assert values.shape == (20, 8) and values.requires_grad
    assert values.abs().max() <= 0.04 + 1e-7  # truncated at two standard deviations


@pytest.mark.parametrize("num_axes,num_bands", [(1, 4), (2, 16), (3, 2)])
def test_fourier_feature_dim_is_the_width_of_the_features(num_axes, num_bands):
    from perceiver_edu.positional import fourier_feature_dim
    shape = (3,) * num_axes
    assert fourier_feature_dim(num_axes, num_bands) == fourier_features(shape, num_bands).shape[-1]
    assert fourier_feature_dim(num_axes, num_bands) == num_axes * (2 * num_bands + 1)


def test_fourier_encoding_module_uses_its_max_resolution_and_is_not_saved():
    encoding = FourierPositionEncoding((4, 5), 3, max_resolution=(8, 10))
    torch.testing.assert_close(encoding(), fourier_features((4, 5), 3, (8, 10)))
    assert not torch.allclose(encoding(), fourier_features((4, 5), 3))
    assert "features" not in encoding.state_dict()  # recomputed, never stored in checkpoints


def test_features_are_made_on_the_device_asked_for():
    # "meta" stands in for "cuda": a tensor made on the wrong device would not be on it
    assert fourier_features((4, 5), 3, device="meta").device.type == "meta"
    from perceiver_edu.positional import linear_positions
    assert linear_positions((4, 5), device="meta").device.type == "meta"
