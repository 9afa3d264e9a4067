"""ipywidgets builders for the notebooks: sliders over pictures that answer at once.

The rule: the work happens once, a slider move only looks a picture up. ``Explorer`` renders a
PNG for each combination of slider values (all of them up front with ``precompute=True``, or
each on its first visit) and keeps it; moving back to a visited value never calls ``render``.
No maths lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets


def _slider(name: str, options: Sequence) -> widgets.Widget:
    """An IntSlider for evenly spaced integers, else a SelectionSlider over ``options``."""
    options = list(options)
    if not options:
        raise ValueError(f"slider {name!r} has no options: give at least one value")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in options)
    steps = {b - a for a, b in zip(options, options[1:], strict=False)} if ints else set()
    style = {"description_width": "initial"}
    layout = widgets.Layout(width="60%")
    if ints and len(steps) <= 1 and (not steps or steps.pop() > 0):
        step = options[1] - options[0] if len(options) > 1 else 1
        return widgets.IntSlider(
            value=options[0],
            min=options[0],
            max=options[-1],
            step=step,
            description=name,
            continuous_update=True,
            style=style,
            layout=layout,
        )
    return widgets.SelectionSlider(
        options=options,
        value=options[0],
        description=name,
        continuous_update=True,
        style=style,
        layout=layout,
    )


class Explorer(widgets.VBox):
    """Sliders (one per keyword) and the picture ``render(**values)`` returns as PNG bytes.

    ``Explorer(render, t=range(0, 1000, 10), play="t")`` shows a slider ``t`` with a Play button.
    ``precompute=True`` renders every combination now; otherwise each on its first visit.
    """

    def __init__(
        self,
        render: Callable[..., bytes],
        *,
        precompute: bool = False,
        play: str | None = None,
        interval_ms: int = 150,
        caption: Callable[..., str] | None = None,
        **options: Sequence,
    ):
        if not options:
            raise ValueError("Explorer needs at least one slider, e.g. t=range(1000)")
        self.render, self.caption, self.cache = render, caption, {}
        self.sliders = {name: _slider(name, opts) for name, opts in options.items()}
        self.image = widgets.Image(format="png")
        self.label = widgets.HTML()
        controls = list(self.sliders.values())
        if play is not None:
            if play not in self.sliders:
                raise ValueError(
                    f"play={play!r} is not a slider: allowed {', '.join(self.sliders)}"
                )
            slider = self.sliders[play]
            n = len(options[play])
            self.play = widgets.Play(min=0, max=n - 1, interval=interval_ms, description="Play")
            if isinstance(slider, widgets.IntSlider):
                # max first: setting a min above the current max is refused
                self.play.max, self.play.min, self.play.step = slider.max, slider.min, slider.step
                self.play.value = slider.value
                widgets.jslink((self.play, "value"), (slider, "value"))
            else:
                widgets.jslink((self.play, "value"), (slider, "index"))
            controls.insert(0, self.play)
        if precompute:
            import itertools

            names = list(options)
            for combo in itertools.product(*(list(options[k]) for k in names)):
                self._frame(dict(zip(names, combo, strict=True)))
        for slider in self.sliders.values():
            slider.observe(lambda _: self.update(), names="value")
        super().__init__([*controls, self.image, self.label])
        self.update()

    def values(self) -> dict:
        return {name: s.value for name, s in self.sliders.items()}

    def _frame(self, values: dict) -> bytes:
        key = tuple(values.values())
        if key not in self.cache:
            self.cache[key] = self.render(**values)
        return self.cache[key]

    def update(self) -> None:
        """Show the picture for the sliders' current values (rendered only on a first visit)."""
        values = self.values()
        self.image.value = self._frame(values)
        if self.caption is not None:
            self.label.value = self.caption(**values)
