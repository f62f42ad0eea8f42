"""Widget fixes, as plain functions (no browser): empty pipeline, clamped LR trims, off-scale markers,
refused lr_min > lr_max, the warm-up in the schedule title, and the static picture of headless runs."""
import matplotlib
import numpy as np
import PIL.Image
import pytest

from tlkit.errors import ParameterError
from tlkit.lr_finder import LRFinderResult, MIN_POINTS, plot_lr_find, smooth_losses
from tlkit.widgets import augment_gallery as G
from tlkit.widgets import lr_finder_view as V
from tlkit.widgets import schedule_explorer as S

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(autouse=True)
def interactive(monkeypatch):
    monkeypatch.delenv("TLKIT_HEADLESS", raising=False)
    yield
    plt.close("all")


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- gallery
def test_empty_pipeline_is_the_identity_and_says_nothing_selected(image):
    assert all(same(im, image) for im in G.pipeline_images(image, [], 0.5, n=3))
    images, title = G.pipeline_view(image, [], 0.5, n=3)
    assert len(images) == 1 and same(images[0], image) and "(nothing selected)" in title
    images, title = G.pipeline_view(image, ["mirror", "rotation"], 0.5, n=3)
    assert len(images) == 3 and title == "mirror -> rotation"


def test_gallery_deselecting_every_entry_shows_the_original(image):
    ui = G.show_gallery({"noise": image}, n=3)
    state = ui.gallery_state
    chain = ui.children[1].children[1].children[0]
    chain.value = ()
    assert state["errors"] == []
    assert len(state["pipeline"]) == 1 and same(state["pipeline"][0], image)
    assert "(nothing selected)" in state["titles"]["pipeline"]
    caption = ui.children[1].children[1].children[1]
    assert "(nothing selected)" in caption.value
    chain.value = ("mirror",)
    assert state["titles"]["pipeline"] == "mirror" and len(state["pipeline"]) == 3


def test_gallery_callback_error_is_shown_in_the_widget_not_raised(image, monkeypatch):
    ui = G.show_gallery({"noise": image}, n=2)
    monkeypatch.setattr(G, "pipeline_view", lambda *a, **k: 1 / 0)
    ui.children[0].children[3].click()  # resample
    assert any("ZeroDivisionError" in e for e in ui.gallery_state["errors"])
    assert "error" in ui.children[1].children[1].children[1].value


# ----------------------------------------------------------------------------- LR finder view
def make_result(n=40, skip_start=4, skip_end=5):
    lrs = np.geomspace(1e-6, 1, n)
    x = np.linspace(0, 1, n)
    losses = 2.0 - 1.5 * np.sin(np.pi * x * 0.8) + 0.05 * np.random.default_rng(0).standard_normal(n)
    losses[-4:] = [3, 5, 8, 12]  # divergence tail
    beta = 0.6
    res = LRFinderResult(lrs, losses, smooth_losses(losses, beta), {}, False, "done", n, beta,
                         skip_start, skip_end)
    res.suggestions = res.suggest()
    return res


def test_clamp_trims_always_leaves_min_points():
    assert V.clamp_trims(40, 3, 4) == (3, 4)
    assert V.clamp_trims(40, 50, 50) == (40 - MIN_POINTS, 0)
    assert V.clamp_trims(40, 20, 30) == (20, 40 - MIN_POINTS - 20)
    assert V.clamp_trims(3, 2, 2) == (0, 0)
    for s in range(0, 45, 7):
        for e in range(0, 45, 7):
            a, b = V.clamp_trims(40, s, e)
            assert 40 - a - b >= MIN_POINTS and a >= 0 and b >= 0


def test_slider_ranges_follow_each_other():
    res = make_result(40)
    r = V.slider_ranges(res, 10, 0)
    assert r["skip_end"] == (0, 40 - MIN_POINTS - 10) and r["skip_start"] == (0, 40 - MIN_POINTS)
    r = V.slider_ranges(res, 10, 20)
    assert r["skip_start"][1] + 20 == 40 - MIN_POINTS and r["skip_end"][1] + 10 == 40 - MIN_POINTS


def test_redraw_with_excessive_trims_still_draws_min_points():
    res = make_result(40)
    _, ax = plt.subplots()
    V.redraw(res, ax, 0.6, 30, 30)
    curve = [ln for ln in ax.lines if ln.get_label().startswith("smoothed")][0]
    assert len(curve.get_xdata()) >= MIN_POINTS
    lo, hi = ax.get_xlim()
    assert hi / lo < 1e6  # not the empty-axis default range


def test_offscale_markers_are_not_drawn_nor_in_the_legend():
    res = make_result(40, skip_start=0, skip_end=0)
    _, ax = plt.subplots()
    suggestions = res.suggest()
    plot_lr_find(res, ax=ax, skip_start=0, skip_end=0)
    drawn = [s for s in suggestions.values() if s.point is not None]
    assert drawn
    victim = drawn[0]
    y = victim.point[1]
    ax.set_ylim(y + 10, y + 20)  # every marker is now below the visible range
    dropped = V.drop_offscale_markers(ax, suggestions)
    assert victim.name in dropped
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(t.startswith(f"{victim.name}:") for t in labels)
    assert all(len(ln.get_xdata()) > 2 for ln in ax.lines)  # only the curves remain
    assert "off the plot" in V.describe(suggestions, dropped)


def test_view_sliders_clamp_and_follow():
    pytest.importorskip("ipywidgets")
    res = make_result(40)
    box = V.lr_finder_view(res)
    smoothing, start, end = box.children[0].children
    start.value = start.max  # as far as the current skip end allows
    assert start.value + end.value == 40 - MIN_POINTS and end.max == end.value
    end.value = 0
    assert start.max == 40 - MIN_POINTS
    start.value = start.max
    assert end.max == 0 and end.value == 0
    start.value = 10
    assert end.max == 40 - MIN_POINTS - 10
    end.value = end.max
    assert start.max == 10
    assert box.view_state["errors"] == [] and box.view_state["draws"] >= 3
    assert "valley" in box.children[2].value


# ----------------------------------------------------------------------------- schedule explorer
def test_lr_min_above_lr_max_is_refused():
    with pytest.raises(ParameterError, match="lr_min"):
        S.schedule_curve(lr_max=1e-3, lr_min=1e-2)
    lrs, total = S.schedule_curve(lr_max=1e-2, lr_min=1e-2)
    assert np.allclose(lrs, 1e-2)


def test_title_names_the_warmup():
    ax = S.draw_schedule(n_cycles=3, cycle_len=1, cycle_mult=2, warmup=0.5)
    assert "7 epochs + 0.5 warm-up = 7.5 epochs" in ax.get_title()
    assert "no warm-up" in S.draw_schedule(warmup=0).get_title()


def test_explorer_refuses_in_words_and_recovers():
    pytest.importorskip("ipywidgets")
    ui = S.schedule_explorer(steps_per_epoch=5)
    sliders = {w.description: w for w in ui.kwargs_widgets}
    first = ui.explorer_state["png"]
    assert first and ui.explorer_state["refused"] is None
    sliders["lr_max"].value = 1e-3
    sliders["lr_min"].value = 1e-2
    assert "above lr_max" in ui.explorer_state["refused"]
    sliders["lr_min"].value = 1e-5
    sliders["warmup"].value = 0.5
    assert ui.explorer_state["refused"] is None and "warm-up" in ui.explorer_state["title"]
    assert ui.explorer_state["png"] != first


# ----------------------------------------------------------------------------- headless pictures
@pytest.mark.parametrize("headless", [False, True])
def test_widgets_display_as_pictures_in_headless_runs(headless, image, monkeypatch):
    pytest.importorskip("ipywidgets")
    if headless:
        monkeypatch.setenv("TLKIT_HEADLESS", "1")
    widgets = [G.show_gallery({"noise": image}, n=2), S.schedule_explorer(5), V.lr_finder_view(make_result())]
    for w in widgets:
        bundle = w._repr_mimebundle_()
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        assert (WIDGET_VIEW in bundle) is not headless
        assert ("image/png" in bundle) is headless
        assert w.static_png[:8] == b"\x89PNG\r\n\x1a\n"
