"""The package imports from a fresh interpreter and comes from this checkout (editable install)."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_import_megadfm_in_fresh_process():
    out = subprocess.run([sys.executable, "-c", "import megadfm, megadfm.config; print(megadfm.__file__, megadfm.__version__)"],
                         capture_output=True, text=True, check=True, cwd="/")
    path, version = out.stdout.split()
    assert os.path.dirname(os.path.dirname(path)) == REPO
    assert version == "0.1.0"


def test_tools_have_help():
    for tool in ["tools/build_qwen_tokenizer.py", "pretrain_dfm.py", "tools/build_stdlib_instructions.py"]:
        out = subprocess.run([sys.executable, os.path.join(REPO, tool), "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout
