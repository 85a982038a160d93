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


def test_a_figure_path_without_a_figure_suffix_is_refused_before_any_work(tmp_path):
    from pdl_plugin import PDLConfigError
    from pdl_plugin.figures import check_figure_path

    with pytest.raises(PDLConfigError, match=r"--plot .*p\.txt: a figure is written as png.*not 'txt'.*p\.png"):
        check_figure_path(tmp_path / "p.txt", "--plot")
    with pytest.raises(PDLConfigError, match="not 'a file without a suffix'"):
        check_figure_path(tmp_path / "plot", "--plot")
    assert check_figure_path(tmp_path / "p.png", "--plot") == tmp_path / "p.png"


def test_without_matplotlib_the_eval_extra_is_named(monkeypatch):
    import builtins

    from pdl_plugin import PDLConfigError
    from pdl_plugin.figures import pyplot

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PDLConfigError, match=r"pdl-plugin\[eval\]"):
        pyplot()
