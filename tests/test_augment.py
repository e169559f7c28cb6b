"""The training augmentation (perceiver_edu.data.augment, and train_batches that calls it), measured.

Each test image writes its own coordinates into its pixels: channel 0 holds row + 1, channel 1
column + 1, channel 2 the image's number in the batch + 1 (mod 255). Zero is never a pixel value, so
the zero padding shows. From one output image the applied crop offset and flip can be read back
exactly, and the whole output can then be compared with the crop rebuilt from them.
"""
import math

import pytest
import torch

from perceiver_edu import data as D

PADDING = 4


def coordinate_images(batch, height=32, width=32):
    rows = torch.arange(1, height + 1).view(1, height, 1).expand(batch, height, width)
    columns = torch.arange(1, width + 1).view(1, 1, width).expand(batch, height, width)
    index = (torch.arange(batch) % 255 + 1).view(batch, 1, 1).expand(batch, height, width)
    return torch.stack([rows, columns, index], dim=1).to(torch.uint8).contiguous()  # (B, 3, H, W)


def read_back(out, padding=PADDING):
    """(top, left, flipped) per image from the pixel at the centre of the crop, which is never padding.

    Output pixel (i, j) shows padded pixel (top + i, left + j), or (top + i, left + W-1-j) when
    flipped; the padded image's pixel (y, x) is the original's (y - padding, x - padding).
    """
    _, _, height, width = out.shape
    i, j = height // 2, width // 2
    row = out[:, 0, i, j].long() - 1                                  # original row of that pixel
    column, next_column = out[:, 1, i, j].long() - 1, out[:, 1, i, j + 1].long() - 1
    flipped = next_column == column - 1
    assert bool(((next_column == column + 1) | flipped).all()), "columns are neither in order nor mirrored"
    top = row + padding - i
    left = torch.where(flipped, column + padding - (width - 1 - j), column + padding - j)
    return top, left, flipped


def rebuild(images, top, left, flipped, padding=PADDING):
    """The crops written out one image at a time with slicing: pad with zeros, cut, mirror."""
    _, _, height, width = images.shape
    padded = torch.zeros(images.shape[0], images.shape[1], height + 2 * padding, width + 2 * padding,
                         dtype=images.dtype)
    padded[:, :, padding:padding + height, padding:padding + width] = images
    crops = [padded[b, :, t:t + height, l:l + width] for b, (t, l) in enumerate(zip(top.tolist(), left.tolist()))]
    crops = [c.flip(-1) if f else c for c, f in zip(crops, flipped.tolist())]
    return torch.stack(crops)


def within_binomial(count, n, p, sigmas=5.0):
    """|count - n p| within `sigmas` binomial standard deviations (the draw is fixed by the seed, so this
    cannot flake; the width lets an equivalent change of the random stream pass)."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def large_batch():
    images = coordinate_images(8192)
    out = D.augment(images, torch.Generator().manual_seed(0))
    return images, out, read_back(out)


def test_every_output_is_the_zero_padded_crop_it_claims(large_batch):
    images, out, (top, left, flipped) = large_batch
    assert out.shape == images.shape and out.dtype == images.dtype and out.is_contiguous()
    assert bool(((top >= 0) & (top <= 2 * PADDING) & (left >= 0) & (left <= 2 * PADDING)).all())
    assert torch.equal(out, rebuild(images, top, left, flipped))  # exact, padding zeros included
    # each output comes from its own input image
    assert torch.equal(out[:, 2, 16, 16], images[:, 2, 0, 0])


def test_flip_rate_is_one_half(large_batch):
    images, _, (_, _, flipped) = large_batch
    n = len(images)
    assert within_binomial(int(flipped.sum()), n, 0.5), f"{int(flipped.sum())} of {n} images flipped"


def test_every_crop_offset_occurs_uniformly_and_independently(large_batch):
    images, out, (top, left, flipped) = large_batch
    n, choices = len(images), 2 * PADDING + 1
    for name, offsets in (("top", top), ("left", left)):
        counts = torch.bincount(offsets, minlength=choices)
        assert len(counts) == choices and bool((counts > 0).all()), f"{name} offsets seen: {counts.tolist()}"
        for value, count in enumerate(counts.tolist()):
            assert within_binomial(count, n, 1 / choices), f"{name} offset {value}: {count} of {n}"
    pairs = torch.bincount(top * choices + left, minlength=choices ** 2)
    assert bool((pairs > 0).all()), "some (top, left) pair never occurs: the offsets are not independent"
    assert within_binomial(int(flipped[top == PADDING].sum()), int((top == PADDING).sum()), 0.5)
    # the padding is zeros: a crop shifted to the top-left shows exactly `PADDING` zero rows and columns
    corner = (top == 0) & (left == 0) & ~flipped
    assert bool(corner.any())
    shifted = out[corner]
    assert not shifted[:, :, :PADDING].any() and not shifted[:, :, :, :PADDING].any()
    assert bool((shifted[:, :, PADDING:, PADDING:] > 0).all())


def test_no_flip_and_other_paddings_and_shapes():
    images = coordinate_images(2048, height=20, width=28)  # not square: rows and columns are not swapped
    out = D.augment(images, torch.Generator().manual_seed(3), padding=2, flip=False)
    top, left, flipped = read_back(out, padding=2)
    assert not flipped.any()
    assert torch.equal(torch.unique(top), torch.arange(5)) and torch.equal(torch.unique(left), torch.arange(5))
    assert torch.equal(out, rebuild(images, top, left, flipped, padding=2))
    mirrored = D.augment(images, torch.Generator().manual_seed(3), padding=2)
    assert within_binomial(int(read_back(mirrored, padding=2)[2].sum()), len(images), 0.5)


def test_the_same_seed_gives_the_same_crops_and_flips():
    images = coordinate_images(256)
    a = D.augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(a, D.augment(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, D.augment(images, torch.Generator().manual_seed(8)))


def _as_uint8(batch):
    return (batch * 255).round().to(torch.uint8)


def test_train_batches_augment_when_asked():
    """What the trainer iterates: floats in [0, 1] that are crops/flips of the right images."""
    images = coordinate_images(4096)
    labels = torch.arange(4096)
    batches = list(D.train_batches(images, labels, 512, torch.Generator().manual_seed(0), augmentation=True))
    assert len(batches) == 8
    seen, flips, offsets = [], 0, set()
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape == (512, 3, 32, 32) and float(x.max()) <= 1.0
        out = _as_uint8(x)
        torch.testing.assert_close(out.float() / 255, x, rtol=0, atol=1e-7)  # exactly k / 255
        top, left, flipped = read_back(out)
        assert torch.equal(out, rebuild(images[y], top, left, flipped))  # label y is image y, augmented
        seen.append(y)
        flips += int(flipped.sum())
        offsets |= set(zip(top.tolist(), left.tolist()))
    assert sorted(torch.cat(seen).tolist()) == list(range(4096))  # one epoch, each image once
    assert within_binomial(flips, 4096, 0.5), f"{flips} of 4096 flipped"
    assert len(offsets) == (2 * PADDING + 1) ** 2


def test_train_batches_without_augmentation_are_the_images_themselves():
    images = coordinate_images(100)
    labels = torch.arange(100)
    batches = list(D.train_batches(images, labels, 32, torch.Generator().manual_seed(0), augmentation=False))
    assert [len(y) for _, y in batches] == [32, 32, 32]  # drop_last
    for x, y in batches:
        assert torch.equal(_as_uint8(x), images[y])
    kept = list(D.train_batches(images, labels, 32, torch.Generator().manual_seed(0), augmentation=False,
                                drop_last=False))
    assert [len(y) for _, y in kept] == [32, 32, 32, 4]
    assert sorted(torch.cat([y for _, y in kept]).tolist()) == list(range(100))
    assert [y.tolist() for _, y in kept[:3]] == [y.tolist() for _, y in batches]  # same seed, same order


def test_eval_batches_and_to_float():
    images = coordinate_images(70)
    labels = torch.arange(70)
    batches = list(D.eval_batches(images, labels, 32))
    assert [y.tolist() for _, y in batches] == [list(range(0, 32)), list(range(32, 64)), list(range(64, 70))]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and torch.equal(x, images.float() / 255)
    assert torch.equal(D.to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)),
                       torch.tensor([0.0, 0.2, 1.0]))


def test_train_batches_are_fixed_by_the_generator_alone():
    """Shuffle, crops and flips all come from the generator passed in, not from the global RNG."""
    images, labels = coordinate_images(256), torch.arange(256)

    def epoch(seed):
        torch.manual_seed(seed)  # the global RNG differs between the runs; it must not matter
        return list(D.train_batches(images, labels, 64, torch.Generator().manual_seed(5)))

    first, second = epoch(1), epoch(2)
    assert not any(torch.equal(_as_uint8(x), images[y]) for x, y in first)  # augmented by default
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = list(D.train_batches(images, labels, 64, torch.Generator().manual_seed(6)))
    assert not torch.equal(first[0][0], other[0][0])
