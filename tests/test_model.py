import dataclasses

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig, count_parameters, parameter_count

SMALL_PRESETS = ["cpu", "seed"]


@pytest.mark.parametrize("name,paper_millions", [("imagenet_perceiver", 44.9), ("imagenet_io", 48.4)])
def test_imagenet_parameter_counts_match_the_papers(name, paper_millions):
    count = parameter_count(PerceiverConfig.preset(name))
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.01, count


def test_weight_sharing_is_a_switch():
    shared = PerceiverConfig.preset("imagenet_perceiver")
    unshared = dataclasses.replace(shared, weight_sharing="none")
    # 8 cross-attends of 2.78M and 8 latent blocks of 37.8M, stored separately
    assert parameter_count(unshared) > 7 * parameter_count(shared)
    model = Perceiver(dataclasses.replace(PerceiverConfig.preset("cpu"), num_cross_attends=3,
                                          weight_sharing="after_first"))
    assert model.cross_plan == [0, 1, 1] and model.block_plan == [0, 1, 1]
    assert len(model.cross_attends) == 2 and len(model.latent_blocks) == 2


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_forward_backward(name):
    torch.manual_seed(0)
    config = PerceiverConfig.preset(name)
    model = Perceiver(config)
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, config.num_classes)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_iterative_cross_attends_with_query_decoder():
    config = PerceiverConfig.preset("cpu", num_cross_attends=2, decoder="query", self_attends_per_block=1)
    logits, record = Perceiver(config)(torch.rand(2, 3, 32, 32), return_attention=True)
    assert logits.shape == (2, 10)
    assert len(record["cross"]) == 2 and len(record["self"]) == 2
    assert record["cross"][0].shape == (2, config.cross_heads, config.num_latents, config.num_inputs)
    assert record["decoder"][0].shape == (2, 1, 1, config.num_latents)


def test_attention_path_gives_the_same_logits():
    model = Perceiver(PerceiverConfig.preset("cpu")).eval()
    x = torch.rand(3, 3, 32, 32)
    logits, record = model(x, return_attention=True)
    torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("decoder", ["mean", "query"])
def test_permuting_inputs_with_their_positions_leaves_logits_unchanged(decoder):
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig.preset("cpu", decoder=decoder)).eval()
    inputs = model.input_array(torch.rand(2, 3, 32, 32))  # (B, M, C): values + position features
    shuffled = inputs[:, torch.randperm(inputs.shape[1])]
    assert not torch.equal(shuffled, inputs)
    torch.testing.assert_close(model.perceive(shuffled), model.perceive(inputs), atol=1e-5, rtol=1e-5)


def test_without_positions_a_shuffled_image_is_indistinguishable():
    model = Perceiver(PerceiverConfig.preset("cpu", position_encoding="none", patch_size=1)).eval()
    image = torch.rand(1, 3, 32, 32)
    shuffled = image.flatten(2)[:, :, torch.randperm(32 * 32)].view_as(image)
    torch.testing.assert_close(model(shuffled), model(image), atol=1e-5, rtol=1e-5)
    with_positions = Perceiver(PerceiverConfig.preset("cpu", patch_size=1)).eval()
    assert not torch.allclose(with_positions(shuffled), with_positions(image), atol=1e-4)


def test_patches_are_contiguous_image_blocks():
    model = Perceiver(PerceiverConfig.preset("cpu", position_encoding="none", pixel_mean=(0, 0, 0),
                                             pixel_std=(1, 1, 1)))
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).view(1, 3, 32, 32)
    patches = model.input_array(image)  # (1, 256, 12)
    assert patches.shape == (1, 256, 12)
    # patch (row 1, col 2) holds pixels rows 2-3, cols 4-5 of each channel
    torch.testing.assert_close(patches[0, 1 * 16 + 2].view(3, 2, 2), image[0, :, 2:4, 4:6])


def test_generic_array_modality():
    config = PerceiverConfig(name="audio", modality="array", input_axes=(500,), input_channels=2,
                             num_bands=8, num_latents=16, latent_dim=32, latent_heads=4, num_classes=5)
    model = Perceiver(config)
    assert model(torch.randn(4, 500, 2)).shape == (4, 5)
    video = PerceiverConfig(name="video", modality="array", input_axes=(4, 8, 8), input_channels=3,
                            num_bands=4, num_latents=8, latent_dim=32, latent_heads=4)
    assert Perceiver(video)(torch.randn(2, 4, 8, 8, 3)).shape == (2, 10)


def test_learned_positions_ablation():
    config = PerceiverConfig.preset("cpu", position_encoding="learned", learned_position_dim=16)
    model = Perceiver(config)
    assert model.input_array(torch.rand(1, 3, 32, 32)).shape == (1, 256, 12 + 16)
    assert model.position.features.requires_grad


def test_latents_are_truncated_normal():
    latents = Perceiver(PerceiverConfig.preset("seed")).latents
    assert latents.abs().max() <= 0.04 + 1e-7
    assert 0.012 < latents.std().item() < 0.02


@pytest.mark.parametrize("overrides,message", [
    (dict(latent_dim=100, latent_heads=8), "not divisible by latent_heads"),
    (dict(cross_qk_dim=30, cross_heads=4), "not divisible by cross_heads"),
    (dict(patch_size=3), "does not divide"),
    (dict(decoder="cls"), "decoder"),
    (dict(num_latents=0), "positive integer"),
    (dict(num_cross_attends=3, num_blocks=2), "num_blocks"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        PerceiverConfig.preset("cpu", **overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="choose one of.*cpu"):
        PerceiverConfig.preset("tiny")


def test_config_round_trips_through_a_dict():
    config = PerceiverConfig.preset("imagenet_io")
    assert PerceiverConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown PerceiverConfig fields"):
        PerceiverConfig.from_dict({**config.to_dict(), "widht": 3})


@pytest.mark.parametrize("bad,message", [
    (torch.rand(2, 3, 64, 64), r"expects images of shape \(B, 3, 32, 32\)"),
    (torch.rand(2, 1, 32, 32), "input_channels=1"),
    (torch.rand(3, 32, 32), "expects images"),
])
def test_bad_input_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        Perceiver(PerceiverConfig.preset("cpu"))(bad)


def test_integer_images_are_rejected():
    with pytest.raises(TypeError, match="float"):
        Perceiver(PerceiverConfig.preset("cpu"))(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# Perceiver IO fidelity (issue 10, item 9) ---------------------------------------------------
def test_imagenet_io_parameter_count_is_exact():
    # The Perceiver IO paper gives 48.4M for its ImageNet model (2D Fourier features, config A).
    # Exact count of our preset: DeepMind's ClassificationDecoder has no LayerNorm between its
    # cross-attend and the final linear layer, so neither has ours (with one: 48,442,675).
    assert parameter_count(PerceiverConfig.preset("imagenet_io")) == 48_440_627


def test_query_decoder_goes_straight_to_the_classifier():
    config = PerceiverConfig.preset("cpu", decoder="query")
    model = Perceiver(config)
    assert isinstance(model.norm_out, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in (model.norm_out, model.classifier))
    mean = Perceiver(PerceiverConfig.preset("cpu"))
    # query (D) + cross-attend block at width D, minus the mean decoder's final LayerNorm (2D)
    block = sum(p.numel() for p in model.decoder_attention.parameters())
    assert parameter_count(config) == count_parameters(mean) + config.latent_dim + block - 2 * config.latent_dim


# Learned positions as in the paper (issue 10, item 7) ----------------------------------------
def test_learned_positions_follow_the_paper():
    config = PerceiverConfig.preset("cpu", position_encoding="learned")
    assert config.learned_position_dim == 128 and config.learned_position_scale == 1.0
    torch.manual_seed(0)
    features = Perceiver(config).position.features  # (M, 128), truncated normal at scale 1.0
    assert features.shape == (config.num_inputs, 128)
    assert features.abs().max() <= 2.0 and 0.8 < features.std().item() < 0.95
    small = Perceiver(dataclasses.replace(config, learned_position_scale=0.02)).position.features
    assert small.abs().max() <= 0.04 + 1e-7


# Permuted images (paper Table 2) --------------------------------------------------------------
@pytest.mark.parametrize("position_encoding", ["fourier", "learned"])
def test_pixel_perceiver_computes_the_same_function_on_permuted_images(position_encoding):
    # Each pixel keeps the position features of its original place, and attention does not care
    # about row order: the logits are equal up to float rounding.
    torch.manual_seed(0)
    config = PerceiverConfig.preset("cpu", patch_size=1, position_encoding=position_encoding)
    plain = Perceiver(config).eval()
    permuted = Perceiver(dataclasses.replace(config, pixel_permutation=7)).eval()
    permuted.load_state_dict(plain.state_dict())
    images = torch.rand(3, 3, 32, 32)
    rows = permuted.input_array(images)
    assert not torch.allclose(rows, plain.input_array(images))  # the rows really are shuffled
    torch.testing.assert_close(permuted(images), plain(images), atol=1e-5, rtol=0)


def test_patch_perceiver_on_permuted_images_is_a_different_function():
    # Patches are built after the permutation, from scattered pixels: the locality prior is gone.
    torch.manual_seed(0)
    config = PerceiverConfig.preset("cpu")  # 2x2 patches
    plain = Perceiver(config).eval()
    permuted = Perceiver(dataclasses.replace(config, pixel_permutation=7)).eval()
    permuted.load_state_dict(plain.state_dict())
    images = torch.rand(3, 3, 32, 32)
    assert not torch.allclose(permuted(images), plain(images), atol=1e-3)
    # ... and its position features stay those of the patch grid
    torch.testing.assert_close(permuted.input_array(images)[..., 12:], plain.input_array(images)[..., 12:])


def test_pixel_permutation_is_fixed_by_its_seed():
    from perceiver_edu.model import fixed_pixel_order, permute_pixels
    order = fixed_pixel_order(32, 32, 5)
    assert torch.equal(order, fixed_pixel_order(32, 32, 5)) and not torch.equal(order, fixed_pixel_order(32, 32, 6))
    assert torch.equal(order.sort().values, torch.arange(1024))
    image = torch.arange(2 * 1024, dtype=torch.float32).view(1, 2, 32, 32)
    moved = permute_pixels(image, order)
    assert moved[0, 1].flatten()[10] == image[0, 1].flatten()[order[10]]
    with pytest.raises(ValueError, match="pixel_permutation"):
        PerceiverConfig.preset("cpu", pixel_permutation=-2)
    with pytest.raises(ValueError, match="images only"):
        PerceiverConfig(modality="array", input_axes=(10,), pixel_permutation=0)
