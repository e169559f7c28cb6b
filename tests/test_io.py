"""Perceiver IO's dense decoder: shapes, decoding anywhere from the same latents, and its training loop."""
import dataclasses
import math

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig, count_parameters, fourier_features, linear_positions
from perceiver_edu.io import (AUTOENCODER_ENCODER, PerceiverIO, _reconstruction_loss, fourier_features_at, psnr,
                              reconstruction_error, train_autoencoder)

# The chapter's encoder, made smaller so that each test takes well under a second.
TINY = dataclasses.replace(AUTOENCODER_ENCODER, name="tiny-io", num_latents=8, latent_dim=32, latent_heads=2,
                           self_attends_per_block=1)


def tiny_model(seed=0, **kwargs) -> PerceiverIO:
    torch.manual_seed(seed)
    return PerceiverIO(TINY, **kwargs).eval()


def test_decoder_none_builds_an_encoder_without_a_head():
    with_head = Perceiver(PerceiverConfig.preset("cpu"))
    encoder = Perceiver(PerceiverConfig.preset("cpu", decoder="none"))
    d, classes = 128, 10  # the cpu preset's latent width and classes
    assert count_parameters(with_head) - count_parameters(encoder) == 2 * d + d * classes + classes
    assert not any(name.startswith(("norm_out", "classifier", "decoder_")) for name, _ in encoder.named_parameters())
    images = torch.rand(2, 3, 32, 32)
    assert encoder.encode(encoder.input_array(images)).shape == (2, 64, d)
    with pytest.raises(ValueError, match="decoder='none'"):
        encoder(images)


def test_the_chapter_encoder_is_a_real_bottleneck():
    latent_values, image_values = PerceiverIO().bottleneck()
    assert image_values == 32 * 32 * 3 and latent_values == 32 * 64 < image_values


def test_shapes():
    model = tiny_model()
    images = torch.rand(3, 3, 32, 32)
    latents = model.encode(images)
    assert latents.shape == (3, TINY.num_latents, TINY.latent_dim)
    assert model(images).shape == (3, 3, 32, 32)
    assert model.decode(latents, (64, 64)).shape == (3, 3, 64, 64)
    assert model.decode(latents, (5, 7)).shape == (3, 3, 5, 7)
    assert model.decode_at(latents, torch.zeros(4, 2)).shape == (3, 4, 3)
    assert model.queries.shape == (32 * 32, 2 * (2 * 8 + 1))


def test_decoding_the_training_grid_again_is_the_forward_pass():
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reconstruction = model(images)
        latents = model.encode(images)
        torch.testing.assert_close(model.decode(latents), reconstruction, rtol=0, atol=0)
        # The same positions given explicitly, one query per pixel in row-major order.
        pixels = model.decode_at(latents, linear_positions((32, 32)).view(-1, 2))  # (B, H*W, C)
    torch.testing.assert_close(pixels.transpose(1, 2).view(2, 3, 32, 32), reconstruction)


def test_explicit_positions_give_the_grid_features():
    for shape, bands, mu in [((32, 32), 8, (16.0, 16.0)), ((5, 9), 3, (7.0, 30.0)), ((11,), 4, (11.0,))]:
        positions = linear_positions(shape).view(-1, len(shape))
        torch.testing.assert_close(fourier_features_at(positions, bands, mu), fourier_features(shape, bands, mu))


def test_queries_between_the_pixels_keep_the_trained_frequencies():
    model = tiny_model()  # mu = 16 per axis, K = 8: the bands are f = 1, 2, ..., 8 exactly
    assert model.query_resolution == (16.0, 16.0)
    # Positions chosen by hand: the centre, and (y, x) = (0.5, -0.25), between pixels of the 32-grid.
    features = fourier_features_at(torch.tensor([[0.0, 0.0], [0.5, -0.25]]), 8, model.query_resolution)
    f = torch.arange(1.0, 9.0)
    sin_y, sin_x, cos_y, cos_x = features[:, 2:].split(8, dim=-1)
    torch.testing.assert_close(sin_y[0], torch.zeros(8))
    torch.testing.assert_close(cos_x[0], torch.ones(8))
    torch.testing.assert_close(sin_y[1], torch.tensor([1.0, 0, -1, 0, 1, 0, -1, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cos_x[1], torch.cos(-0.25 * math.pi * f))
    # A 64 x 64 query grid uses the trained mu, not fourier_features' default (the grid size).
    queries_64 = model.output_queries((64, 64))
    torch.testing.assert_close(queries_64, fourier_features((64, 64), 8, 16))
    assert not torch.allclose(queries_64, fourier_features((64, 64), 8))
    # linspace(-1, 1, 64) and linspace(-1, 1, 32) share only the ends: the corners are the same queries.
    corners_64, corners_32 = queries_64.view(64, 64, -1), model.queries.view(32, 32, -1)
    for (r64, c64), (r32, c32) in [((0, 0), (0, 0)), ((0, 63), (0, 31)), ((63, 0), (31, 0)), ((63, 63), (31, 31))]:
        torch.testing.assert_close(corners_64[r64, c64], corners_32[r32, c32])
    assert not torch.allclose(corners_64[1, 1], corners_32[0, 0]) and not torch.allclose(corners_64[1, 1], corners_32[1, 1])


def test_the_63_grid_holds_the_pixels_at_even_indices():
    """linspace(-1, 1, 63) contains linspace(-1, 1, 32) at its even indices; odd ones are the midpoints."""
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = model.encode(images)
        fine = model.decode(latents, (63, 63))
        torch.testing.assert_close(fine[..., ::2, ::2], model(images), atol=1e-5, rtol=0)
        # An odd index of the 63-grid is exactly halfway between two pixels of the 32-grid.
        midpoint = torch.tensor([[(-1 + 2 * 4 / 31 + -1 + 2 * 5 / 31) / 2, -1 + 2 * 7 / 31]])  # (y, x)
        torch.testing.assert_close(model.decode_at(latents, midpoint)[:, 0], fine[:, :, 9, 14], atol=1e-5, rtol=0)


def test_chunked_decoding_is_exact():
    model = tiny_model()
    with torch.no_grad():
        latents = model.encode(torch.rand(2, 3, 32, 32))
        whole = model.decode(latents, (64, 64))
        torch.testing.assert_close(model.decode(latents, (64, 64), chunk_size=1000), whole, atol=1e-6, rtol=0)


def test_bad_input_is_refused_with_a_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match="queries must be"):
        model.decode_queries(model.encode(torch.rand(1, 3, 32, 32)), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="modality='image'"):
        PerceiverIO(PerceiverConfig(modality="array", input_axes=(16,), input_channels=1, decoder="none"))
    with pytest.raises(ValueError, match="expects images of shape"):
        model(torch.rand(1, 3, 16, 16))


def fixed_images(count=16, seed=0):
    """Smooth colour blobs, learnable in a few steps: uint8 (count, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    centres = torch.rand(count, 3, 2, generator=g) * 2 - 1
    blobs = torch.exp(-((y - centres[..., 0, None, None]) ** 2 + (x - centres[..., 1, None, None]) ** 2) * 3)
    return (blobs * 255).to(torch.uint8)


def test_training_reduces_the_reconstruction_error():
    model = tiny_model()
    images = fixed_images()
    before = reconstruction_error(model, images)
    history = train_autoencoder(model, images, steps=30, batch_size=16, lr=3e-3, warmup_steps=3, seed=0)
    after = reconstruction_error(model, images)
    assert len(history) == 30 and all(math.isfinite(loss) for loss in history)
    assert after < 0.5 * before, (before, after)
    assert psnr(after) > psnr(before)


def test_training_on_a_subset_of_the_pixels_reduces_the_error_on_all_of_them():
    model = tiny_model()
    images = fixed_images()
    before = reconstruction_error(model, images)
    train_autoencoder(
        model, images, steps=30, batch_size=16, lr=3e-3, warmup_steps=3, points=128
    )
    assert reconstruction_error(model, images) < 0.5 * before
    with pytest.raises(ValueError, match="points must be between 1 and 1024"):
        train_autoencoder(model, images, steps=1, points=2000)


def test_the_subsampled_loss_scores_the_chosen_pixels():
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    chosen = torch.randperm(1024, generator=torch.Generator().manual_seed(5))[:40]
    with torch.no_grad():
        loss = _reconstruction_loss(model, images, 40, torch.Generator().manual_seed(5))
        full = model(images).flatten(2)[:, :, chosen]  # (B, C, P)
    torch.testing.assert_close(
        loss, (full - images.flatten(2)[:, :, chosen]).pow(2).mean()
    )


@pytest.mark.parametrize("points", [None, 100])
def test_training_is_deterministic_for_a_seed(points):
    """The same seed and weights give the same run, bit for bit, whatever the global RNG's state."""
    images = fixed_images(24)
    start = tiny_model(seed=0).state_dict()
    runs = []
    for seed, global_seed in ((0, 1), (0, 2), (1, 1)):
        model = tiny_model()
        model.load_state_dict(start)
        torch.manual_seed(global_seed)
        history = train_autoencoder(model, images, steps=6, batch_size=8, seed=seed, points=points)
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[2][0][0] != runs[0][0][0]  # another seed draws another first batch


def test_a_nan_loss_stops_training_before_the_weights_change():
    model = tiny_model()
    with torch.no_grad():
        model.to_pixels.bias.fill_(float("nan"))
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="step 1"):
        train_autoencoder(model, fixed_images(8), steps=3, batch_size=8)
    for before, after in zip(weights, model.parameters()):
        torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True)


def test_psnr_known_values():
    assert psnr(1.0) == 0.0 and psnr(0.01) == pytest.approx(20.0) and psnr(0.001) == pytest.approx(30.0)
