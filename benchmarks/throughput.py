"""Training-step throughput of the package's Perceiver against a naive reference, side by side.

    python benchmarks/throughput.py [--preset seed] [--batch 64] [--steps 6] [--repeats 3]

The naive reference has the seed notebook's design: it lifts every pixel to the latent width with a
Linear layer, then projects keys and values from that with two more Linear layers, and writes attention
as an explicit softmax(QK^T / sqrt(d)) V. Everything else (widths, depth, heads, MLPs) matches the
preset, so the two models learn the same kind of function at nearly the same parameter count.
The package's version differs by design only: keys/values projected straight from the raw
(pixel + Fourier) channels with one fused K/V matmul, a fused QKV matmul in the latent layers, and
torch's scaled_dot_product_attention kernel.

The last two lines say how much speed-up that design can buy at all: both models run the same latent
tower, and the script prints its share of the FLOPs and the fraction of the machine's measured matmul
peak that a `--target` speed-up would need.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from perceiver_edu import Perceiver, PerceiverConfig, count_parameters, describe_device, fourier_features


class NaiveAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, context):
        b, n, d = x.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))


class NaiveLayer(nn.Module):
    def __init__(self, dim, heads, widening, cross):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = NaiveAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, widening * dim), nn.GELU(), nn.Linear(widening * dim, dim))
        self.cross = cross

    def forward(self, latents, inputs=None):
        q = self.norm_q(latents)
        latents = latents + self.attention(q, self.norm_kv(inputs) if self.cross else q)
        return latents + self.mlp(self.norm_mlp(latents))


class NaivePerceiver(nn.Module):
    def __init__(self, config: PerceiverConfig):
        super().__init__()
        self.config = config
        features = fourier_features(config.grid, config.num_bands, config.max_resolution)
        self.register_buffer("positions", features)
        self.input_projection = nn.Linear(config.input_channels + features.shape[1], config.latent_dim)
        self.latents = nn.Parameter(torch.randn(config.num_latents, config.latent_dim) * 0.02)
        self.cross = NaiveLayer(config.latent_dim, config.cross_heads, config.cross_widening, cross=True)
        self.layers = nn.ModuleList(NaiveLayer(config.latent_dim, config.latent_heads, config.latent_widening, False)
                                    for _ in range(config.self_attends_per_block))
        self.head = nn.Sequential(nn.LayerNorm(config.latent_dim), nn.Linear(config.latent_dim, config.num_classes))

    def forward(self, images):
        b = images.shape[0]
        pixels = images.permute(0, 2, 3, 1).reshape(b, -1, self.config.input_channels)
        inputs = self.input_projection(torch.cat([pixels, self.positions.expand(b, -1, -1)], -1))  # (B, M, D)
        latents = self.cross(self.latents.expand(b, -1, -1), inputs)
        for layer in self.layers:
            latents = layer(latents)
        return self.head(latents.mean(1))


def forward_backward_flops(loss_fn, batch_size, model):
    """FLOPs per image of computing loss_fn() and its backward pass."""
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def train_step_flops(model, batch):
    """FLOPs of one forward + backward per image. FlopCounterMode does not see inside the CPU
    scaled_dot_product_attention kernel, so the package's model is counted on its explicit-softmax
    path (`return_attention=True`), which does the same arithmetic."""
    images, labels = batch
    forward = (lambda x: model(x, return_attention=True)[0]) if isinstance(model, Perceiver) else model
    return forward_backward_flops(lambda: F.cross_entropy(forward(images), labels), len(images), model)


def latent_tower_flops(reference: NaivePerceiver, batch_size):
    """FLOPs per image of the latent self-attention layers alone, which both models share unchanged:
    no design of the cross-attend can make a training step cheaper than this."""
    config = reference.config
    latents = torch.randn(batch_size, config.num_latents, config.latent_dim, requires_grad=True)  # (B, N, D)

    def tower_output():
        x = latents
        for layer in reference.layers:
            x = layer(x)
        return x.sum()
    return forward_backward_flops(tower_output, batch_size, reference)


def images_per_second(model, batch, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = batch

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up: allocator, kernels, optimizer state
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * images.shape[0] / (time.perf_counter() - start)


def matmul_peak_gflops(size=2048, repeats=10):
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of each model")
    parser.add_argument("--target", type=float, default=2.5, help="speed-up to test against the peak")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = PerceiverConfig.preset(args.preset)
    if config.patch_size != 1 or config.num_cross_attends != 1:
        parser.error("the naive reference covers one cross-attend over raw pixels (patch_size=1)")
    models = {"naive reference": NaivePerceiver(config), "perceiver_edu": Perceiver(config)}
    batch = (torch.rand(args.batch, 3, *config.input_axes), torch.randint(0, config.num_classes, (args.batch,)))
    peak = matmul_peak_gflops()
    print(f"device: {describe_device(torch.device('cpu'))}; measured fp32 matmul peak: {peak:.1f} GFLOP/s")
    print(f"preset {config.name!r}, batch {args.batch}, {args.steps} steps x {args.repeats} alternating repeats")

    speeds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            speeds[name].append(images_per_second(model, batch, args.steps))
    best, flops = {}, {}
    for name, model in models.items():
        flops[name] = train_step_flops(model, batch)
        best[name] = max(speeds[name])
        print(f"{name:16s} params {count_parameters(model) / 1e6:5.2f}M  train-step GFLOP/img {flops[name] / 1e9:5.2f}  "
              f"img/s {best[name]:6.1f} (runs: {', '.join(f'{s:.1f}' for s in speeds[name])})  "
              f"peak fraction {flops[name] * best[name] / 1e9 / peak:5.1%}")
    ours, naive = "perceiver_edu", "naive reference"
    print(f"speed-up: {best[ours] / best[naive]:.2f}x")

    # How much speed-up the arithmetic leaves room for, from the figures above.
    tower = latent_tower_flops(models[naive], args.batch)
    print(f"shared latent tower: {tower / 1e9:.2f} GFLOP/img, {tower / flops[ours]:.0%} of perceiver_edu's; "
          f"FLOP ratio naive/ours {flops[naive] / flops[ours]:.2f}x; if all but the tower were free, at the "
          f"reference's efficiency: {flops[naive] / tower:.2f}x")
    needed = args.target * best[naive] * flops[ours] / 1e9 / peak
    print(f"a {args.target}x speed-up needs perceiver_edu at {needed:.0%} of the measured matmul peak "
          f"for the whole training step (it runs at {flops[ours] * best[ours] / 1e9 / peak:.0%})")


if __name__ == "__main__":
    main()
