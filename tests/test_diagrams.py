"""The book's SVG diagrams (book/figures/) are exactly what tools/diagrams.py draws from the presets.

If a preset changes, the committed figures would show stale numbers: this test regenerates them into
a temporary folder and fails until `make diagrams` has been run and the result committed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from perceiver_edu.config import PerceiverConfig

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "book" / "figures"
SVG = "{http://www.w3.org/2000/svg}"
BOOK_COLUMN = 760  # pixels: the widest figure that fits the book's text column without scaling

spec = importlib.util.spec_from_file_location("diagrams", ROOT / "tools" / "diagrams.py")
diagrams = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diagrams)
NAMES = sorted(diagrams.diagrams())


def test_committed_figures_are_what_the_generator_draws(tmp_path):
    written = diagrams.write_all(tmp_path)
    assert sorted(path.name for path in written) == NAMES
    committed = sorted(path.name for path in FIGURES.glob("*.svg"))
    assert committed == NAMES, f"book/figures holds {committed}, the generator draws {NAMES}"
    stale = [path.name for path in written if path.read_bytes() != (FIGURES / path.name).read_bytes()]
    assert not stale, f"{stale} differ from what tools/diagrams.py draws now: run `make diagrams` and commit"


def test_generation_is_reproducible(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for a, b in zip(diagrams.write_all(first), diagrams.write_all(second)):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("name", NAMES)
def test_figure_is_accessible_self_contained_and_fits_the_column(name):
    text = (FIGURES / name).read_text(encoding="utf-8")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and title.text and title.text.strip(), f"{name} has no <title>"
    assert desc is not None and len(desc.text.split()) >= 10, f"{name} has no real <desc>"
    assert root.get("role") == "img" and root.get("aria-labelledby") == "title desc"
    assert int(root.get("width")) <= BOOK_COLUMN
    # Nothing fetched from anywhere: no embedded images, links, stylesheets or web fonts.
    assert not [el.tag for el in root.iter() if el.tag in (f"{SVG}image", f"{SVG}a", f"{SVG}style",
                                                           f"{SVG}foreignObject", f"{SVG}script")]
    without_namespace = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for marker in ("http:", "https:", "url(http", "@import", "@font-face", "href"):
        assert marker not in without_namespace, f"{name} references {marker!r}"


def test_shape_flow_numbers_come_from_the_config():
    cpu = PerceiverConfig.preset("cpu")
    drawn = diagrams.shape_flow_svg(cpu)
    assert f"(B, {cpu.num_inputs}, {cpu.input_dim})" == "(B, 256, 46)"
    for shape in ("(B, 3, 32, 32)", "(B, 256, 46)", "(B, 64, 128)", "(B, 10)"):
        assert shape in drawn
    smaller = dataclasses.replace(cpu, num_latents=32, num_bands=4)
    redrawn = diagrams.shape_flow_svg(smaller)
    assert "(B, 32, 128)" in redrawn and f"(B, {smaller.num_inputs}, {smaller.input_dim})" in redrawn
    assert "(B, 64, 128)" not in redrawn


def test_matrices_are_drawn_to_scale():
    cpu, imagenet = PerceiverConfig.preset("cpu"), PerceiverConfig.preset("imagenet_perceiver")
    root = ET.fromstring(diagrams.attention_matrices_svg(cpu, imagenet))
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("rx") == "0"]
    sizes = [(float(r.get("width")), float(r.get("height"))) for r in rects]
    assert len(sizes) == 4  # cross and self, for each data set
    for (cross_w, cross_h), (self_w, self_h), config in ((*sizes[:2], cpu), (*sizes[2:], imagenet)):
        ratio = (self_w * self_h) / (cross_w * cross_h)
        assert ratio == pytest.approx(config.num_inputs / config.num_latents, rel=0.01)
