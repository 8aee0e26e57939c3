"""Every plot the report writes is rendered with fixture runs (one method; many methods, tasks
and settings) and its text must fit: inside the figure, and no two labels on top of each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.text import Text  # noqa: E402

from sparse_ft.report import PLOTS, analyse, build_figures, load_runs, main  # noqa: E402
from test_report import _config, _summary, _write_run  # noqa: E402

TOL = 1.0  # pixels


def _one_method(root: Path) -> Path:
    """The narrow-range case: one method, one task, two densities whose updated fractions
    (0.110% and 0.112%) are nearly equal; a default log axis crowds its minor labels there."""
    for i, (density, seed) in enumerate(itertools.product((0.005, 0.01), (1, 2))):
        cfg = _config("random_mask", "mrpc", seed, root / str(i))
        cfg["method"]["density"] = density
        s = _summary("random_mask", "mrpc", seed, 0.8 + seed / 100, sparsity={"overall": 0.9 + density / 100})
        s["params"]["updated_fraction"] = 0.0011 + density / 25
        s["energy"]["kwh_power_integral"] = 0.0061 + seed / 1e4
        _write_run(root / str(i), cfg, s)
    return root


def _many_methods(root: Path) -> Path:
    """Ten methods (some with long names), four tasks, two densities, widely spread figures."""
    methods = ["dense", "fish", "random_mask", "bitfit", "diff_pruning", "lora", "adapter_houlsby",
               "read", "magnitude_pruning", "movement_pruning"]
    i = 0
    for j, method in enumerate(methods):
        for task, density, seed in itertools.product(("mrpc", "rte", "sst2", "cola"), (0.005, 0.02), (1, 2)):
            cfg = _config(method, "mrpc", seed, root / str(i))
            cfg["task"] = {"name": task}
            cfg["method"]["density"] = density
            cfg["method"]["num_samples"] = 1024 * (j + 1)
            s = _summary(method, task, seed, 0.5 + j / 25 + seed / 100,
                         sparsity={"overall": min(0.99, 0.09 * j + density)})
            s["params"]["updated_fraction"] = 10.0 ** -(j % 6) * (1 + density)
            s["energy"]["kwh_power_integral"] = 0.001 * 3 ** j
            s["memory"]["peak_bytes"]["train"] = (100 + 40 * j) * (1 << 20)
            _write_run(root / str(i), cfg, s)
            i += 1
    return root


def _drawn_tick_labels(ax) -> dict[str, list[Text]]:
    """Tick labels actually drawn: visible, non-empty, at a tick inside the axes (in pixels,
    so log and linear axes are treated alike)."""
    box = ax.bbox
    out = {}
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        def inside(loc: float) -> bool:
            x, y = ax.transData.transform((loc, ax.get_ylim()[0]) if name == "x" else (ax.get_xlim()[0], loc))
            return box.x0 - TOL <= x <= box.x1 + TOL if name == "x" else box.y0 - TOL <= y <= box.y1 + TOL

        ticks = axis.get_major_ticks() + axis.get_minor_ticks()
        out[name] = [t.label1 for t in ticks if inside(t.get_loc())
                     and t.label1.get_visible() and t.label1.get_text().strip()]
    return out


def _layout_problems(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    problems = []
    ticks = {}
    for ax in fig.axes:
        if ax.get_visible():
            for name, labels in _drawn_tick_labels(ax).items():
                ticks[(id(ax), name)] = labels
    tick_ids = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                for t in (tk.label1 for tk in axis.get_major_ticks() + axis.get_minor_ticks())}
    others = [t for t in fig.findobj(Text) if id(t) not in tick_ids and t.get_visible() and t.get_text().strip()
              and (t.axes is None or t.axes.get_visible())]
    drawn = others + [t for labels in ticks.values() for t in labels]
    for t in drawn:
        bb = t.get_window_extent(renderer)
        if bb.x0 < frame.x0 - TOL or bb.y0 < frame.y0 - TOL or bb.x1 > frame.x1 + TOL or bb.y1 > frame.y1 + TOL:
            problems.append(f"outside the figure: {t.get_text()!r} {bb.bounds} (figure {frame.bounds})")
    for labels in ticks.values():
        for a, b in itertools.combinations(labels, 2):
            if a.get_window_extent(renderer).shrunk(0.98, 0.98).overlaps(b.get_window_extent(renderer)):
                problems.append(f"tick labels overlap: {a.get_text()!r} and {b.get_text()!r}")
    for a, b in itertools.combinations(others, 2):
        if a.get_window_extent(renderer).shrunk(0.98, 0.98).overlaps(b.get_window_extent(renderer)):
            problems.append(f"labels overlap: {a.get_text()!r} and {b.get_text()!r}")
    return problems


@pytest.mark.parametrize("make", [_one_method, _many_methods], ids=["one_method", "many_methods"])
def test_every_plot_fits_its_figure(tmp_path: Path, make) -> None:
    an = analyse(load_runs([make(tmp_path / "sweep")]))
    figures = build_figures(an)
    assert set(figures) == set(PLOTS)
    for name, fig in figures.items():
        assert not isinstance(fig, str), f"{name} skipped: {fig}"
        assert _layout_problems(fig) == [], name


def test_written_pngs_match_the_figures(tmp_path: Path) -> None:
    root = _one_method(tmp_path / "sweep")
    assert main([str(root), "-q"]) == 0
    for name in PLOTS:
        assert (root / name).read_bytes()[:4] == b"\x89PNG", name
