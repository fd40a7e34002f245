"""The HTML report renders in a real browser (skipped where Chromium is not installed)."""

import shutil
import subprocess

import numpy as np
import pytest

from fairsteer.report import Report, figure


def test_report_is_self_contained_and_escaped(tmp_path):
    rep = Report("t <1>", "sub")
    rep.add_table(["a", "b"], [["x<y", 1.5]])
    fig, ax = figure()
    ax[0, 0].plot([0, 1], [0, 1])
    rep.add_figure(fig, "cap")
    rep.write(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "x&lt;y" in text and "t &lt;1&gt;" in text and "data:image/png;base64," in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_demo_report_renders_in_headless_chromium(tmp_path):
    from fairsteer_experiments.demo import build_report, run_demo

    build_report(
        [run_demo("univariate", seeds=(0,), n_train=1000, n_test=2000)], str(tmp_path / "demo.html")
    )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            # this machine's closed network refuses QUIC / background connections
            # (env notes, "Known to work"): keep Chromium from trying
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            f"file://{tmp_path / 'demo.html'}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    matplotlib_image = pytest.importorskip("matplotlib.image")
    pixels = matplotlib_image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    # A rendered page with a table and plots is far from blank: many distinct colours.
    assert np.unique((pixels[..., :3] * 255).astype(int).reshape(-1, 3), axis=0).shape[0] > 50
