"""The dashboard's page template, CSS and JS are package data: found through importlib.resources, and
shipped by setup.py in a non-editable build (the editable install would find them in the checkout anyway)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources

from megadfm.report import STATIC_FILES, static_text
from tests.conftest import REPO

PLACEHOLDERS = ("__TITLE__", "__CSS__", "__JS__", "__DATA__")


def test_static_files_are_package_resources():
    static = resources.files("megadfm.report").joinpath("static")
    assert sorted(p.name for p in static.iterdir() if p.is_file()) == sorted(STATIC_FILES)
    for name in STATIC_FILES:
        assert static.joinpath(name).is_file() and static_text(name).strip(), name
    template = static_text("dashboard.html")
    assert all(template.count(p) >= 1 for p in PLACEHOLDERS), template
    assert "function render()" in static_text("dashboard.js") and "#selfcheck" in static_text("dashboard.css")


def test_setup_py_ships_the_static_files(tmp_path):
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=REPO, check=True,
                   capture_output=True, text=True)
    for name in STATIC_FILES:
        assert (lib / "megadfm" / "report" / "static" / name).is_file(), f"setup.py does not ship static/{name}"
    # the built copy, imported from outside the checkout, renders from its own files
    code = ("import megadfm.report as r, sys; assert r.__file__.startswith(sys.argv[1]), r.__file__; "
            "run = {'run_dir': 'x', 'meta': {}, 'train': [], 'val': [], 'spikes': [], 'notes': []}; "
            "page = r.render_html(run); assert 'function exportPngs(done)' in page and '__JS__' not in page; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(lib)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(lib)))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
