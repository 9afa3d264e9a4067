"""Widgets answer at once: after a value's first visit, moving a slider never renders again."""

import numpy as np
import pytest
import torch

from lesson_lib.viz import grid, png, to_uint8
from lesson_lib.widgets import Explorer


class CountingModel:
    """Stands in for a network: counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, t):
        self.calls += 1
        return torch.full((1, 1, 4, 4), t / 10 - 1)


def test_precomputed_explorer_never_calls_the_model_on_a_slider_move():
    model = CountingModel()
    explorer = Explorer(
        lambda t: png(grid(model(t)), 1), precompute=True, play="t", t=range(0, 20, 2)
    )
    assert model.calls == 10
    first = explorer.image.value
    explorer.sliders["t"].value = 8
    assert explorer.image.value != first  # the picture changed...
    for t in (0, 18, 4, 8):
        explorer.sliders["t"].value = t
    assert model.calls == 10  # ...without one more model call


def test_lazy_explorer_renders_each_value_once():
    model = CountingModel()
    explorer = Explorer(lambda t, w: png(grid(model(t + w)), 1), t=[0, 5, 9], w=[0.0, 1.0, 3.0])
    assert model.calls == 1
    explorer.sliders["w"].value = 3.0
    explorer.sliders["t"].value = 9
    explorer.sliders["t"].value = 0
    explorer.sliders["w"].value = 0.0
    assert model.calls == 3  # (0, 0), (0, 3), (9, 3); back to (0, 0) was cached


def test_uneven_options_get_a_selection_slider_that_plays():
    explorer = Explorer(lambda t: png(np.zeros((2, 2), np.uint8), 1), play="t", t=[999, 500, 1])
    explorer.play.value = 2
    assert explorer.sliders["t"].options == (999, 500, 1)


def test_bad_play_name_is_refused():
    with pytest.raises(ValueError, match="play='s'"):
        Explorer(lambda t: b"", play="s", t=[1, 2])


def test_grid_layout_and_range():
    images = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 3, 3)
    g = grid(images, nrow=4, pad=1)
    assert g.shape == (2 * 4 + 1, 4 * 4 + 1) and g.dtype == np.uint8
    assert g[1, 1] == 0 and g[5, 5] == 255 and g[5, 9] == 200  # first black, sixth white, gap grey
    assert to_uint8(torch.tensor([-2.0, 0.0, 2.0])).tolist() == [0, 128, 255]


def test_play_button_follows_a_slider_that_starts_high():
    explorer = Explorer(
        lambda step: png(np.zeros((2, 2), np.uint8), 1), play="step", step=[125, 250, 375]
    )
    assert (explorer.play.min, explorer.play.max, explorer.play.step) == (125, 375, 125)
