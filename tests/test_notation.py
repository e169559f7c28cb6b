"""book/notation.md: its `cpu` column is the code's `cpu` preset, so the page cannot drift from it.

Each row named in EXPECTED must hold, in its "This book (`cpu`)" column, the value computed here
from PerceiverConfig.preset("cpu") and TrainConfig.recipe("cpu"). Rows of symbols without a
single configured value are not in EXPECTED; every row of EXPECTED must exist in the page.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from perceiver_edu import PerceiverConfig
from perceiver_edu.train import TrainConfig

PAGE = Path(__file__).resolve().parents[1] / "book" / "notation.md"
BOOK_COLUMN = "This book (`cpu`)"


def _expected() -> dict[tuple[str, str], str]:
    """(table heading, symbol cell) -> the text its `cpu` cell must start with."""
    c, t = PerceiverConfig.preset("cpu"), TrainConfig.recipe("cpu")
    mu = c.max_resolution or c.grid
    assert len(set(mu)) == 1 and len(set(c.grid)) == 1, "the table assumes a square grid"
    latent_head = (c.latent_dim // c.latent_heads)
    cross_head = (c.cross_qk_dim or c.input_dim) // c.cross_heads
    return {
        ("Sizes", "$M$"): f"{c.num_inputs}",
        ("Sizes", "$C$"): f"{c.input_dim}",
        ("Sizes", "$N$"): f"{c.num_latents}",
        ("Sizes", "$D$"): f"{c.latent_dim}",
        ("Sizes", "$F$"): f"{c.cross_qk_dim or c.input_dim}",
        ("Sizes", "$p$"): f"{c.patch_size}",
        ("Sizes", "$H, W$"): f"{c.grid[0]} × {c.grid[1]}",
        ("Sizes", "$S$"): f"{c.input_axes[0]}",
        ("Sizes", "$B$"): f"{t.batch_size}",
        ("Position features", "$d$"): f"{len(c.grid)}",
        ("Position features", "$K$"): f"{c.num_bands}",
        ("Position features", "$\\mu$"): f"{mu[0]}",
        ("Position features", "$f_k$"): f"from 1 to {mu[0] // 2}",
        ("Position features", "$\\gamma(\\mathbf{x})$"): f"{c.position_dim}",
        ("Attention", "$h$"): f"cross {c.cross_heads}, latent {c.latent_heads}",
        ("Attention", "$d$, $d_{qk}/h$"): f"cross {cross_head}, latent {latent_head}",
        ("Depth and width", "cross-attends"): f"{c.num_cross_attends}",
        ("Depth and width", "layers per block"): f"{c.self_attends_per_block}",
        ("Depth and width", "$L$"): f"{c.depth * c.self_attends_per_block}",
        ("Depth and width", "$w$"): f"cross {c.cross_widening}, latent {c.latent_widening}",
        ("Depth and width", "sharing"): f"{c.weight_sharing}",
        ("Training", "$K$"): f"{c.num_classes}",
        ("Training", "$\\eta_{\\max}$"): f"{t.lr:g}",
        ("Training", "epochs"): f"{t.epochs}",
        ("Training", "$T$, $W$"): f"warmup {t.warmup_epochs:g} epochs",
        ("Training", "$\\varepsilon$"): f"{t.label_smoothing:g}",
    }


def read_tables(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(heading, first cell) -> {column name: cell} for every row of every table in the page."""
    rows, heading, header = {}, "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not re.fullmatch(r"[-: ]+", "".join(cells)):
                rows[(heading, cells[0])] = dict(zip(header, cells))
        else:
            header = None
    return rows


def test_the_notation_page_has_a_cpu_column():
    rows = read_tables(PAGE.read_text(encoding="utf8"))
    assert rows and all(BOOK_COLUMN in row for row in rows.values()), \
        f"every table in {PAGE.name} needs a {BOOK_COLUMN!r} column"


@pytest.mark.parametrize("key, value", sorted(_expected().items()), ids=lambda v: str(v))
def test_cpu_values_match_the_preset(key, value):
    rows = read_tables(PAGE.read_text(encoding="utf8"))
    assert key in rows, f"{PAGE.name} has no row {key[1]!r} under '## {key[0]}'"
    cell = rows[key][BOOK_COLUMN]
    assert cell == value or cell.startswith(value + " "), \
        f"{PAGE.name}, {key}: the `cpu` preset gives {value!r}, the page says {cell!r}"
