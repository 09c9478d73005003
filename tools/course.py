#!/usr/bin/env python3
"""The course's two commands, and the set-up they share. Needs nothing but python3.

    python3 tools/course.py build   # export the library and render the site into _docs/
    python3 tools/course.py test    # nbval over every notebook in nbs/ + pytest over tests/

Both create `.venv/` on first use, install a CPU torch into it when it has no torch, then the package
with its dev extras; the second time they only re-install when settings.ini or setup.py changed.

    python3 tools/course.py run nbs/01_data.ipynb   # (authors) execute a notebook in place, keep its outputs, clean it
    python3 tools/course.py setup                   # only the set-up

Environment knobs:
    DIFFCOURSE_TORCH   what to pip-install when .venv has no torch (default "torch==2.13.0", a CPU wheel).
                       A GPU user installs their own torch into .venv first (it is kept), or sets e.g.
                       DIFFCOURSE_TORCH="torch --index-url https://download.pytorch.org/whl/cu124".
    DIFFCOURSE_WORKERS number of pytest-xdist workers for `test` (default: the number of CPUs, at most 4).
"""
import hashlib, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT/'.venv'
BIN = VENV/('Scripts' if os.name == 'nt' else 'bin')
PY = BIN/('python.exe' if os.name == 'nt' else 'python')
STAMP = VENV/'.diffcourse-installed'

def log(msg): print(f'[course] {msg}', flush=True)

def sh(*args, env=None, check=True, **kw):
    "Run `args` with the venv's bin first on PATH; exit with its code if it fails and `check`."
    e = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'VIRTUAL_ENV': str(VENV), **(env or {})}
    e.pop('PYTHONHOME', None)
    r = subprocess.run([str(a) for a in args], cwd=ROOT, env=e, **kw)
    if check and r.returncode: sys.exit(r.returncode)
    return r

def pip(*args): sh(PY, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *args)

def _fingerprint():
    h = hashlib.sha256()
    for f in ('settings.ini', 'setup.py'): h.update((ROOT/f).read_bytes())
    return h.hexdigest()

def setup():
    "Create .venv, give it a torch (CPU by default, a user's own is kept), install diffcourse[dev] editable."
    if not PY.exists():
        log(f'creating {VENV.relative_to(ROOT)}/')
        subprocess.run([sys.executable, '-m', 'venv', str(VENV)], check=True)
    if sh(PY, '-c', 'import torch', check=False, capture_output=True).returncode:
        spec = os.environ.get('DIFFCOURSE_TORCH', 'torch==2.13.0').split()
        log(f'installing {" ".join(spec)} (set DIFFCOURSE_TORCH to choose another build)')
        pip(*spec)
    if not STAMP.exists() or STAMP.read_text() != _fingerprint():
        log('installing diffcourse[dev] (editable) and its dependencies')
        pip('-e', f'{ROOT}[dev]')
        STAMP.write_text(_fingerprint())
    else: log('environment up to date')

def export():
    log('exporting notebooks -> diffcourse/')
    sh(BIN/'nbdev_export')

def build():
    "Export the library, then render the site into _docs/ (quarto when present, pandoc otherwise)."
    setup(); export()
    if shutil.which('quarto'):
        log('rendering the site with quarto (nbdev_docs)')
        sh(BIN/'nbdev_docs')
    else:
        log('quarto not found: rendering the site with pandoc (tools/site.py)')
        sh(PY, ROOT/'tools'/'site.py')
    log(f'site ready: open {ROOT/"_docs"/"index.html"}')

def test(*extra):
    "nbval over every notebook in nbs/ and pytest over tests/, in one pytest run."
    setup(); export()
    n = os.environ.get('DIFFCOURSE_WORKERS', str(min(os.cpu_count() or 1, 4)))
    log(f'running nbval over nbs/ and pytest over tests/ with {n} workers')
    r = sh(PY, '-m', 'pytest', '-n', n, '--dist', 'loadfile', '--nbval-lax', '--nbval-current-env',
           '--nbval-sanitize-with', 'nbs/sanitize.cfg', '--nbval-cell-timeout', '900',
           '-p', 'no:cacheprovider', '--durations', '15', '-ra', 'nbs', 'tests', *extra,
           env={'IN_TEST': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // int(n))), 'TOKENIZERS_PARALLELISM': 'false',
                'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore::DeprecationWarning'}, check=False)
    sys.exit(r.returncode)

def run(*nbs):
    "Execute notebooks in place (outputs kept for the site), then clean them with nbdev_clean."
    setup()
    if not nbs: sys.exit('usage: course.py run nbs/NN_name.ipynb [...]')
    code = ('import sys, nbformat\n'
            'from nbclient import NotebookClient\n'
            'for f in sys.argv[1:]:\n'
            '    nb = nbformat.read(f, as_version=4)\n'
            '    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(__import__("pathlib").Path(f).parent)}}).execute()\n'
            '    nbformat.write(nb, f); print("executed", f, flush=True)\n')
    sh(PY, '-c', code, *nbs, env={'MPLBACKEND': 'module://matplotlib_inline.backend_inline', 'HF_HUB_OFFLINE': '1'})  # nothing is downloaded
    sh(BIN/'nbdev_clean', '--fname', 'nbs')

CMDS = dict(setup=setup, build=build, test=test, run=run, export=lambda: (setup(), export()))

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in CMDS:
        sys.exit(f'usage: python3 tools/course.py {{{"|".join(CMDS)}}} (got {sys.argv[1:] or "nothing"})')
    CMDS[sys.argv[1]](*sys.argv[2:])
