"""Every plot the report writes is rendered with fixture runs (one method; many methods, tasks
and settings) and its text must fit: inside the figure, and no two labels on top of each other."""

from __future__ import annotations

import itertools
import json
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


# --- issue 19, item 13: every plot the report can write, with 20 methods ---------------------------
TWENTY = ["dense", "fish", "random_mask", "bitfit", "diff_pruning", "lora", "adapter", "ia3", "prompt_tuning", "lst",
          "read", "magnitude", "movement", "pst", "omp", "imp", "lora_fa", "compacter", "sparse_adapter", "bitfit_bias_only"]
COINCIDE = ("adapter", "pst", "diff_pruning", "read")  # the same updated % and score: drawn on top of one another before


def _twenty_methods(root: Path) -> Path:
    """A sweep of 20 methods × 2 tasks, launched by Hydra's basic launcher (one process for every
    job); half the methods have one seed (no ± bar), four share their updated % and score."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n  launcher:\n"
                                        "    _target_: hydra._internal.core_plugins.basic_launcher.BasicLauncher\n")
    i = 0
    for j, method in enumerate(TWENTY):
        for task in ("mrpc", "rte"):
            for seed in (1, 2) if j % 2 else (1,):
                d = root / str(i)
                i += 1
                same = method in COINCIDE
                cfg = _config(method, task, seed, d)
                s = _summary(method, task, seed, 0.70 if same else 0.5 + j / 50 + seed / 200,
                             sparsity={"overall": 0.5 if same else min(0.95, 0.05 * j)})
                s["params"]["updated_fraction"] = 0.01 if same else 10.0 ** -(j % 5) * (1 + j / 40)
                s["energy"]["kwh_power_integral"] = 0.004 if same else 0.001 * 1.4 ** j
                s["memory"] = {"device": "cpu", "peak_bytes": {"train": (300 + 25 * j + seed) * (1 << 20)}}
                _write_run(d, cfg, s)
    return root


def _series(fig) -> dict[str, set]:
    """label → the (colour, marker) pairs it is drawn with, over every panel of the figure."""
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer, ErrorbarContainer

    out: dict[str, set] = {}
    for ax in fig.axes:
        for c in ax.containers:
            label = c.get_label()
            if not label or label.startswith("_"):
                continue
            if isinstance(c, ErrorbarContainer):
                style = (to_hex(c.lines[0].get_color()), c.lines[0].get_marker())
            elif isinstance(c, BarContainer):
                style = (to_hex(c.patches[0].get_facecolor()), None)
            else:
                continue
            out.setdefault(label, set()).add(style)
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), set()).add((to_hex(line.get_color()), line.get_marker()))
    return out


def _check(name: str, fig) -> None:
    if not hasattr(fig.canvas, "get_renderer"):  # a pyplot figure after plt.close(): draw it with Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    assert _layout_problems(fig) == [], name
    fig.canvas.draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer())  # inches: everything drawn, labels and legends included
    w, h = fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= w + 0.01 and tight.y1 <= h + 0.01, (name, tight.bounds, (w, h))
    styles = _series(fig)
    assert all(len(s) == 1 for s in styles.values()), (name, styles)  # one style per series in every panel
    pairs = [next(iter(s)) for s in styles.values()]
    assert len(set(pairs)) == len(pairs), (name, styles)  # no two series look alike
    assert fig._suptitle is not None and fig._suptitle.get_text().strip(), f"{name} has no title"


def test_every_plot_with_twenty_methods_fits_and_tells_every_series_apart(tmp_path: Path, monkeypatch) -> None:
    """Issue 19, item 13: with 20 methods each series keeps its own (colour, marker) pair, points
    that coincide are spread apart, every label and legend fits inside the figure, and each figure
    has a title; the memory bars draw no ± for single runs and warn about shared processes."""
    import numpy as np
    from matplotlib.figure import Figure

    from sparse_ft.report import generate_report
    from sparse_ft.report.papers import builder
    from sparse_ft.train.local_sgd import plot_accuracy_vs_communication
    from test_report_papers_ere import compress_run, source_run
    from test_report_papers_pruning import _known_curve, _omp, _pst_grid
    from test_report_papers_pruning import _write as pruning_run
    from test_report_papers_read import make_run

    saved: dict[str, Figure] = {}
    real_savefig = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)

    sweep = _twenty_methods(tmp_path / "sweep")
    result = generate_report([sweep])
    assert {n for n, why in result.plots.items() if why is None} == set(PLOTS)

    papers = tmp_path / "papers"
    _known_curve(papers / "ess")  # OMP curve (magnitude, fisher, 2:4), IMP rounds
    for k, (s, m) in enumerate([(0.1, 0.80), (0.3, 0.70)]):
        _omp(papers / "ess", f"fisher{k}", s, m, score="fisher")
        _omp(papers / "ess", f"nm{k}", s + 0.2, m - 0.05, pattern="2:4")
    rounds = [{"round": 0, "sparsity": 0.2, "omp_mask_cosine": 1.0}, {"round": 1, "sparsity": 0.36, "omp_mask_cosine": 0.985}]
    pruning_run(papers / "ess", "imp", "imp", 0.79, sparsity=0.36, method_cfg={"rounds": 2}, rounds=rounds)
    _pst_grid(papers / "pst", {"magnitude": 0.80, "movement": 0.82, "pst": 0.83}, {"magnitude": 0.84, "movement": 0.84, "pst": 0.845})
    src = source_run(papers / "ere")
    for method, opts, pct, acc in [("ere", {"rank_prior": 8, "bits": 4}, 0.9, 0.78), ("ere", {"rank_prior": 64, "bits": 4}, 3.1, 0.797),
                                   ("bitq", {"bits": 4}, 12.6, 0.80), ("lra", {"rank": 8}, 1.3, 0.75)]:
        compress_run(papers / "ere", src, method, opts, pct, acc, acc + 0.06)
    for k, method in enumerate(["dense", "bitfit", "prompt_tuning", "ia3", "adapter", "lora", "lst", "read"]):
        same = method in ("adapter", "lora")  # two READ-table methods on one point
        make_run(papers / "read", method, method, main=0.75 if same else 0.6 + k / 50, peak=2e9 if same else (1 + k / 4) * 1e9,
                 energy={"kwh_counter": 0.003 if same else 0.001 * (k + 1)}, model="minilm", random_init=False)
    make_run(papers / "read", "read_large", "read", main=0.77, peak=0.9e9, energy={"kwh_counter": 0.0015},
             model="minilm", random_init=False, drop_last_layers=4)
    out = tmp_path / "out"
    out.mkdir()
    for paper, folder in (("essential", "ess"), ("pst", "pst"), ("ere", "ere"), ("read", "read")):
        builder(paper)(load_runs([papers / folder]), out, True)

    run = tmp_path / "local_sgd"
    run.mkdir()
    evals = [{"type": "eval", "step": s, "main": 0.5 + s / 100, "comm_full_model_equivalents": s * 1.7,
              "comm_warmup_full_model_equivalents": 3.4} for s in range(1, 11)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in evals) + "\n")
    assert plot_accuracy_vs_communication(run) == run / "accuracy_vs_communication.png"
    assert "end of DDP warm-up (3.4)" in _series(saved["accuracy_vs_communication.png"])  # the warm-up's end is marked

    expected = {*PLOTS, "essential_drop_vs_sparsity.png", "essential_imp_omp_mask_cosine.png", "pst_score_vs_sparsity.png",
                "ere_score_vs_storage.png", "read_energy_vs_score.png", "read_memory_vs_score.png", "accuracy_vs_communication.png"}
    assert set(saved) == expected, set(saved) ^ expected
    problems = {}
    for name, fig in saved.items():
        try:
            _check(name, fig)
        except AssertionError as err:
            problems[name] = str(err)[:600]
    assert problems == {}

    from matplotlib.colors import to_hex

    for name in ("score_vs_updated.png", "score_vs_energy.png", "score_vs_sparsity.png"):
        for ax in saved[name].axes:  # one point per method in each panel: 20 points, 20 different looks
            if ax.get_visible():
                looks = [(to_hex(c.lines[0].get_color()), c.lines[0].get_marker()) for c in ax.containers]
                assert len(looks) == 20 and len(set(looks)) == 20, (name, looks)
    updated = saved["score_vs_updated.png"]
    assert len(_series(updated)) == 20
    for ax in updated.axes:  # the four methods on one point are drawn side by side, each visible
        if ax.get_visible():
            centres = [ax.transData.transform((c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]))
                       for c in ax.containers if c.get_label() in COINCIDE]
            assert len(centres) == 4
            gaps = [np.hypot(*(a - b)) for a, b in itertools.combinations(centres, 2)]
            assert min(gaps) >= 7 * 110 / 72, gaps  # at least a marker's width (7 pt) apart, in pixels
    memory = saved["memory_per_method.png"]
    (ax,) = [a for a in memory.axes if a.get_visible()]
    single = sum(1 for j in range(20) if j % 2 == 0) * 2  # one seed: no error bar
    bars = sum(len(c) for c in ax.containers if c.get_label() in ("mrpc", "rte"))
    assert bars == 40
    err = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert sum(len(c.lines[2][0].get_segments()) for c in err) == 40 - single  # ± std only where n > 1
    assert "shared one multirun process" in memory._suptitle.get_text().replace("\n", " ")
    # jobs launched one process each (submitit) carry no caveat
    (sweep / "multirun.yaml").write_text("hydra:\n  launcher:\n    _target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher\n")
    own = build_figures(analyse(load_runs([sweep])))["memory_per_method.png"]
    assert "multirun process" not in own._suptitle.get_text().replace("\n", " ")
