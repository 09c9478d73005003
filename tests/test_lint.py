"""The code style the course holds itself to (../shared/STYLE.md, rule 13), checked by ruff over the repository:
at most 120 columns and one statement per line, in the notebooks (the source of diffcourse/) and every other Python
file. The rules live in ruff.toml; `.venv/bin/ruff format FILE` wraps most long lines by itself."""

import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    r = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert 'All checks passed' in r.stdout


def test_ruff_reads_the_notebooks():
    "A lint that silently skipped the notebooks would pass for the wrong reason: a long line in a cell must be found."
    nb = ROOT / 'nbs' / '00_core.ipynb'
    r = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', '--no-cache', '--line-length', '10', str(nb)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and '00_core.ipynb:cell' in r.stdout, r.stdout[-2000:]
