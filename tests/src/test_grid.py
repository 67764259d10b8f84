import numpy as np
import pytest

from src.grid import labelled_grid


def test_grid_enlarges_tiles_nearest_and_labels_columns():
    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    grid = labelled_grid(["reference", "collage", "generated"], rows, min_tile=160)
    tile = 64 * 3  # the smallest integer factor reaching 160 px
    assert grid.dtype == np.uint8 and grid.shape[1] == 3 * (tile + 4) + 4
    header = grid.shape[0] - 2 * (tile + 4)
    assert (grid[:header] < 128).any()  # the column titles are drawn
    first = grid[header : header + tile, 4 : 4 + tile]
    np.testing.assert_array_equal(first[::3, ::3], rows[0][0])  # nearest neighbour: the pixels themselves


def test_grid_refuses_ragged_rows():
    tile = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="square tiles"):
        labelled_grid(["a", "b"], [[tile, tile], [tile]])
