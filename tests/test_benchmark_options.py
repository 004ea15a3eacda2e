"""The optimizer comparison refuses a wrong name in one line, before any run starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_DIR


@pytest.mark.parametrize("option, value, words", [
    ("--optimizers", "sdfl-ei+bogus", ["'sdfl-ei+bogus'", "flags smooth", "likelihood_only", "faces"]),
    ("--optimizers", "optuna-gpp", ["'optuna-gpp'", "optuna-gp, botorch-qlognei"]),
    ("--problems", "hartman6", ["hartman6", "hartmann6"]),
])
def test_a_wrong_name_is_refused_naming_the_choices(tmp_path, option, value, words):
    out_file = tmp_path / "comparison.md"
    done = subprocess.run([sys.executable, "benchmarks/policies.py", "--comparison-only", "--seeds", "1",
                           option, value, "--out", str(out_file)], cwd=REPO_DIR, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert all(word in out for word in words), out[-3000:]
    assert not out_file.exists()
