"""`save_figure`: a figure is written whole or not at all (two study processes may redraw one report's figures)."""

import pytest

from pdl_plugin.figures import pyplot, save_figure


def test_save_figure_writes_a_png_and_keeps_the_old_one_when_drawing_fails(tmp_path, monkeypatch):
    path = tmp_path / "plots" / "curve.png"
    figure, axes = pyplot().subplots()
    axes.plot([0, 1], [1, 0])
    save_figure(figure, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    figure, axes = pyplot().subplots()
    axes.plot([0, 1], [0, 1])

    def fail(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="drawing failed"):
        save_figure(figure, path)
    assert path.read_bytes() == before  # the earlier figure, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]  # no temporary left behind
