"""Attention-map collection, reshaping and the plot helpers."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from perceiver_edu import Perceiver, PerceiverConfig, fourier_features  # noqa: E402
from perceiver_edu.attention_maps import (collect_attention, effective_pixels, grid_cell,  # noqa: E402
                                          latents_at_pixel, rank_latents, to_grid)
from perceiver_edu import visualize  # noqa: E402


@pytest.fixture(scope="module")
def cpu_model():
    torch.manual_seed(0)
    return Perceiver(PerceiverConfig.preset("cpu")).eval()


def test_one_hot_weight_lands_on_its_pixel():
    grid = (4, 6)
    weights = torch.zeros(2, 3, 5, 24)  # (B, heads, N, M)
    weights[1, 2, 4, 2 * 6 + 5] = 1.0   # row 2, column 5 in row-major order
    maps = to_grid(weights, grid)
    assert maps.shape == (2, 3, 5, 4, 6)
    assert maps[1, 2, 4, 2, 5] == 1.0 and maps.sum() == 1.0
    with pytest.raises(ValueError, match="grid"):
        to_grid(weights, (5, 5))


def test_grid_order_matches_the_models_input_array(cpu_model):
    """A bright 2x2 patch at image pixel (y, x) is the input element that to_grid puts at grid_cell(y, x)."""
    config = cpu_model.config
    image = torch.zeros(1, 3, 32, 32)
    y, x = 10, 27
    image[:, :, y, x] = 1.0
    values = cpu_model.input_array(image)[0, :, :3 * config.patch_size ** 2]  # (M, patch values)
    pixel_values = values * torch.tensor(config.pixel_std).repeat_interleave(4) \
        + torch.tensor(config.pixel_mean).repeat_interleave(4)  # undo the model's normalisation
    changed = to_grid(pixel_values.abs().sum(-1), config.grid)  # (h, w)
    row, col = grid_cell((y, x), (32, 32), config.grid)
    assert (row, col) == (5, 13)
    assert changed.argmax().item() == row * config.grid[1] + col
    assert changed[row, col] > 0 and changed.sum() == changed[row, col]
    # and the raw position features run down the rows and across the columns
    positions = to_grid(cpu_model.input_array(image)[0, :, -config.position_dim:][:, :2].T, config.grid)
    assert torch.all(positions[0].diff(dim=0) > 0) and torch.all(positions[1].diff(dim=1) > 0)


def test_upsample_is_nearest_neighbour():
    small = torch.arange(4.0).reshape(2, 2)
    big = visualize.upsample_map(small, (4, 4))
    assert (big == torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.]]).numpy()).all()
    with pytest.raises(ValueError, match="multiples"):
        visualize.upsample_map(small, (5, 4))


def test_reverse_view_and_summaries():
    weights = torch.full((3, 16), 1 / 16)       # (N, M) on a 4x4 grid
    weights[2] = 0.0
    weights[2, 1 * 4 + 3] = 1.0                  # latent 2 looks only at cell (1, 3)
    assert torch.allclose(effective_pixels(weights), torch.tensor([16.0, 16.0, 1.0]))
    at_pixel = latents_at_pixel(weights, (3, 7), (8, 8), (4, 4))  # image pixel (3, 7) -> cell (1, 3)
    assert torch.allclose(at_pixel, torch.tensor([1 / 16, 1 / 16, 1.0]))
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1, 3] = True
    top, mass = rank_latents(weights, 1, region)
    assert top.tolist() == [2] and mass.item() == 1.0
    assert rank_latents(weights, 2)[0][0].item() == 2  # by peak weight without a region


def test_collect_attention(cpu_model):
    images = torch.rand(5, 3, 32, 32)
    cpu_model.train()
    record = collect_attention(cpu_model, images, include_self=True, batch_size=2)
    assert cpu_model.training, "the model's mode must be restored"
    cpu_model.eval()
    config = cpu_model.config
    assert record.grid == (16, 16)
    assert [w.shape for w in record.cross] == [(5, config.cross_heads, config.num_latents, 256)]
    assert len(record.latent_self) == config.self_attends_per_block
    assert torch.allclose(record.cross[0].sum(-1), torch.ones(5, 1, 64), atol=1e-5)
    assert record.maps(0).shape == (5, 1, 64, 16, 16)
    with torch.no_grad():
        assert torch.allclose(record.logits, cpu_model(images), atol=1e-5)


def test_plot_helpers_return_figures():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    maps = torch.rand(2, 3, 16, 16)
    history = [{"epoch": 1, "train_loss": 2.0, "test_loss": None, "train_acc": 0.2, "test_acc": None, "lr": 1e-3},
               {"epoch": 2, "train_loss": 1.5, "test_loss": 1.6, "train_acc": 0.4, "test_acc": 0.38, "lr": 5e-4}]
    probabilities = torch.softmax(torch.randn(4, 10), -1)
    figures = [
        visualize.show_heatmaps(maps, xlabel="x", ylabel="y", titles=["a", "b", "c"]),
        visualize.show_heatmaps(maps, shared_scale=False, row_labels=["r0", "r1"]),
        visualize.show_overlay(image, maps[0, 0], title="latent 0"),
        visualize.show_overlays(image, maps[0], titles=["0", "1", "2"], ncols=2),
        visualize.show_pixel_latents(image, torch.rand(64), (5, 9)),
        visualize.show_position_bands(fourier_features((16, 16), 4), (16, 16), [0, 1, 2, 10]),
        visualize.plot_history(history),
        visualize.show_predictions(torch.rand(4, 3, 32, 32), [0, 1, 2, 3], probabilities, [str(i) for i in range(10)]),
        visualize.plot_confusion_matrix(torch.eye(10, dtype=torch.long) * 5, [str(i) for i in range(10)]),
    ]
    for fig in figures:
        assert isinstance(fig, Figure) and fig.axes
    assert len(figures[0].axes) == 2 * 3 + 1  # six maps and a colour bar
    acc_lines = figures[6].axes[1].lines
    assert [tuple(line.get_xdata()) for line in acc_lines] == [(1, 2), (2,)]  # None values skipped
    png = visualize.figure_to_png(figures[2])
    assert png.startswith(b"\x89PNG")
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        visualize.plot_history([])
    with pytest.raises(ValueError, match="rows, cols"):
        visualize.show_heatmaps(maps[0])
