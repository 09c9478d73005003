#!/usr/bin/env python3
"""The course's commands, and the set-up they share. Needs nothing but python3.

    python3 tools/course.py lab     # (learners) JupyterLab on the lessons in nbs/, with the course's kernel
    python3 tools/course.py build   # export the library and render the site into _docs/
    python3 tools/course.py test    # nbval over every notebook in nbs/ + pytest over tests/

All create `.venv/` on first use, install a CPU torch into it when it has no torch, then the package
with its dev extras (JupyterLab among them); the second time they only re-install when settings.ini or setup.py changed.
`lab` serves on 127.0.0.1 only, with a fresh token, and prints the URL; arguments after `lab` go to JupyterLab
(e.g. `lab --no-browser`). Ctrl-C stops it.

    python3 tools/course.py run nbs/01_data.ipynb   # (authors) execute a notebook in place, keep its outputs, clean it
    python3 tools/course.py headers                 # (authors) rewrite every lesson's Colab cell and cost line
    python3 tools/course.py setup                   # only the set-up

Environment knobs:
    DIFFCOURSE_TORCH   what to pip-install when .venv has no torch (default "torch==2.13.0", a CPU wheel).
                       A GPU user installs their own torch into .venv first (it is kept), or sets e.g.
                       DIFFCOURSE_TORCH="torch --index-url https://download.pytorch.org/whl/cu124".
    DIFFCOURSE_WORKERS number of pytest-xdist workers for `test` (default: the number of CPUs, at most 4).
"""

import configparser, hashlib, json, os, re, secrets, shutil, socket, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / '.venv'
BIN = VENV / ('Scripts' if os.name == 'nt' else 'bin')
PY = BIN / ('python.exe' if os.name == 'nt' else 'python')
STAMP = VENV / '.diffcourse-installed'
NBS = ROOT / 'nbs'
RESULTS = ROOT / 'benchmarks' / 'results.json'
FIRST_LESSON = '02_schedules.ipynb'  # where diffusion starts; 00_*, 01_data: the helpers, symbols and data it uses


def log(msg):
    print(f'[course] {msg}', flush=True)


def venv_env(extra=None):
    "os.environ with the venv's bin first on PATH (what every command runs under), updated with `extra`."
    path = f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}'
    e = {**os.environ, 'PATH': path, 'VIRTUAL_ENV': str(VENV), **(extra or {})}
    e.pop('PYTHONHOME', None)
    return e


def sh(*args, env=None, check=True, **kw):
    "Run `args` with the venv's bin first on PATH; exit with its code if it fails and `check`."
    r = subprocess.run([str(a) for a in args], cwd=ROOT, env=venv_env(env), **kw)
    if check and r.returncode:
        sys.exit(r.returncode)
    return r


def pip(*args):
    sh(PY, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *args)


def settings():
    "settings.ini's [DEFAULT] section: the one home of the version, the requirements and the repository's URL."
    cp = configparser.ConfigParser(delimiters=['='])
    cp.read(ROOT / 'settings.ini', encoding='utf-8')
    return cp['DEFAULT']


def _fingerprint():
    h = hashlib.sha256()
    for f in ('settings.ini', 'setup.py'):
        h.update((ROOT / f).read_bytes())
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
        search = settings().get('search_requirements', '').split()  # optional: the site builds without it
        quiet = ['-q', '--disable-pip-version-check']
        if search and sh(PY, '-m', 'pip', 'install', *quiet, *search, check=False).returncode:
            log(f'could not install {" ".join(search)}: the site will be built without search')
        STAMP.write_text(_fingerprint())
    else:
        log('environment up to date')


def export():
    log('exporting notebooks -> diffcourse/')
    sh(BIN / 'nbdev_export')


def build():
    "Export the library, then render the site into _docs/ (quarto when present, pandoc otherwise)."
    setup()
    export()
    if shutil.which('quarto'):
        log('rendering the site with quarto (nbdev_docs)')
        sh(BIN / 'nbdev_docs')
    else:
        log('quarto not found: rendering the site with pandoc (tools/site.py)')
        sh(PY, ROOT / 'tools' / 'site.py')
    log(f'site ready: open {ROOT / "_docs" / "index.html"}')
    if (ROOT / '_docs' / 'pagefind').exists():
        log('its search works when the site is served: .venv/bin/python -m http.server -d _docs 8000')


def test(*extra):
    "nbval over every notebook in nbs/ and pytest over tests/, in one pytest run."
    setup()
    export()
    n = os.environ.get('DIFFCOURSE_WORKERS', str(min(os.cpu_count() or 1, 4)))
    log(f'running nbval over nbs/ and pytest over tests/ with {n} workers')
    r = sh(
        PY,
        '-m',
        'pytest',
        '-n',
        n,
        '--dist',
        'loadfile',
        '--nbval-lax',
        '--nbval-current-env',
        '--nbval-sanitize-with',
        'nbs/sanitize.cfg',
        '--nbval-cell-timeout',
        '900',
        '-p',
        'no:cacheprovider',
        '--durations',
        '15',
        '-ra',
        'nbs',
        'tests',
        *extra,
        env={
            'IN_TEST': '1',
            'MPLBACKEND': 'Agg',
            'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // int(n))),
            'TOKENIZERS_PARALLELISM': 'false',
            'HF_HUB_OFFLINE': '1',
            'PYTHONWARNINGS': 'ignore::DeprecationWarning',
        },
        check=False,
    )
    sys.exit(r.returncode)


def run(*nbs):
    "Execute notebooks in place (outputs kept for the site), then clean them with nbdev_clean."
    setup()
    if not nbs:
        sys.exit('usage: course.py run nbs/NN_name.ipynb [...]')
    code = (
        'import sys, nbformat\n'
        'from nbclient import NotebookClient\n'
        'for f in sys.argv[1:]:\n'
        '    nb = nbformat.read(f, as_version=4)\n'
        '    NotebookClient(nb, timeout=1800, kernel_name="python3",'
        ' resources={"metadata": {"path": str(__import__("pathlib").Path(f).parent)}}).execute()\n'
        '    nbformat.write(nb, f); print("executed", f, flush=True)\n'
    )
    sh(
        PY, '-c', code, *nbs, env={'MPLBACKEND': 'module://matplotlib_inline.backend_inline', 'HF_HUB_OFFLINE': '1'}
    )  # nothing is downloaded
    for f in nbs:  # clean only what was run: other notebooks may be open in an editor
        sh(BIN / 'nbdev_clean', '--fname', f)


# ---------------------------------------------------------------- lab: JupyterLab for learners


def free_port(preferred=8888):
    "`preferred` when nothing listens on it at 127.0.0.1, else a free port the OS picks."
    with socket.socket() as s:
        try:
            s.bind(('127.0.0.1', preferred))
        except OSError:
            s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def lab_env(token):
    "The environment of `lab`: the token (not on the command line, where `ps` shows it) and the venv's kernel first."
    # JUPYTER_PREFER_ENV_PATH: the venv's python3 kernelspec comes before one in ~/.local/share/jupyter, and
    # jupyter_client starts it with the server's interpreter, the venv's.
    return venv_env({'JUPYTER_TOKEN': token, 'JUPYTER_PREFER_ENV_PATH': '1'})


def lab_argv(port, *extra):
    "The command line of `lab`: the venv's JupyterLab on nbs/, listening on 127.0.0.1:`port` only."
    root = ['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else []  # jupyter refuses root without it
    return [
        BIN / 'jupyter',
        'lab',
        f'--ServerApp.root_dir={NBS}',
        '--ServerApp.ip=127.0.0.1',
        f'--ServerApp.port={port}',
        '--ServerApp.port_retries=0',
        *root,
        *extra,
    ]


def lab(*extra):
    "Set up and export as every command does, then JupyterLab from .venv on the lessons; prints the URL to open."
    setup()
    export()
    port = free_port()
    token = secrets.token_urlsafe(24)
    log(f'JupyterLab on {NBS.relative_to(ROOT)}/, kernel: {PY.relative_to(ROOT)} (Ctrl-C stops it)')
    log(f'start with {FIRST_LESSON}; 00_notation.ipynb is the glossary every lesson links to')
    log(f'open http://127.0.0.1:{port}/lab/tree/{FIRST_LESSON}?token={token}')
    p = subprocess.Popen([str(a) for a in lab_argv(port, *extra)], cwd=ROOT, env=lab_env(token))
    try:
        sys.exit(p.wait())
    except KeyboardInterrupt:  # jupyter saw the Ctrl-C too; make it shut down (kernels included) without asking
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
        sys.exit(130)


# ---------------------------------------------------------------- headers: what every lesson opens with
COLAB = """#| hide
# On Colab, install the course package at this course's version (settings.ini's {version}, as the git tag v{version})
# and check that its shipped weights came with it; anywhere else this cell does nothing.
if 'google.colab' in sys.modules:
    import subprocess
    url = 'git+{git_url}@v{version}'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', url], check=True)
    from diffcourse.core import WEIGHTS_DIR
    assert sorted(WEIGHTS_DIR.glob('*.safetensors')), f'the package came without its weights ({{WEIGHTS_DIR}})'"""
COST_HEAD = '**What this lesson costs to run** (written by `benchmarks/run.py` from `benchmarks/results.json`):'
TIME_ITEM, TRAINED_ITEM, LOADED_ITEM = '- time on a 2-core CPU:', '- trained live:', '- loaded:'


def lessons():
    "The lesson notebooks: nbs/NN*.ipynb (index.ipynb, the home page, is not a lesson)."
    return sorted(p for p in NBS.glob('[0-9]*.ipynb'))


def colab_source(version=None):
    "The Colab cell every lesson carries, for settings.ini's version (or `version`)."
    cfg = settings()
    return COLAB.format(version=version or cfg['version'], git_url=cfg['git_url'])


def load_results():
    "benchmarks/results.json ({} before the first run)."
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def lesson_needs(results=None):
    "Per lesson: file, title, time as you run it and as CI does (results.json), what it trains and loads (cost cell)."
    res = results if results is not None else load_results()
    rows = []
    for f in lessons():
        cells = [(c['cell_type'], ''.join(c['source'])) for c in json.loads(f.read_text())['cells']]
        title = next((m[1] for k, s in cells if k == 'markdown' and (m := re.match(r'#\s+(.+)', s))), f.stem)
        cost = next((s for k, s in cells if k == 'markdown' and s.startswith(COST_HEAD)), None)
        trained, loaded = cost_items(cost) if cost else ('(not stated yet)', '(not stated yet)')
        rows.append(
            dict(
                file=f.name,
                title=title.strip(),
                learner=_took(res.get('notebooks', []), f.name, 'learner'),
                ci=_took(res.get('notebooks', []), f.name, 'ci'),
                trained=trained,
                loaded=loaded,
            )
        )
    return rows


def _took(rows, name, mode):
    "How long `name` took in `mode` ('learner' or 'ci') in the benchmark rows, as words."
    r = next((r for r in rows if r['notebook'] == name and r.get('mode', 'ci') == mode), None)
    if r is None:
        return 'not measured yet'
    if not r['ok']:
        return 'did not finish in the last run'
    return f"{r['seconds']:.0f} s" if r['seconds'] < 90 else f"{r['seconds'] / 60:.1f} min"


def time_line(name, results=None):
    "The lesson's generated time item: learner mode and CI mode from benchmarks/results.json, with the date measured."
    res = results if results is not None else load_results()
    rows = res.get('notebooks', [])
    dates = sorted(r['date'] for r in rows if r['notebook'] == name and r.get('date'))
    run = res.get('measured', {}).get('notebooks', {}).get('date') or res.get('machine', {}).get('date')
    date = dates[-1] if dates else run
    when = f'; measured {date}' if date else ''
    return (
        f'{TIME_ITEM} {_took(rows, name, "learner")} as you run it (one kernel, all cores); '
        f'{_took(rows, name, "ci")} as CI runs it (`IN_TEST=1`, one thread){when}'
    )


def cost_source(name, trained, loaded, results=None):
    "The markdown cell that says what a lesson costs: the generated time item, then what it trains live and loads."
    return '\n'.join([COST_HEAD, '', time_line(name, results), f'{TRAINED_ITEM} {trained}', f'{LOADED_ITEM} {loaded}'])


def cost_items(source):
    "(trained, loaded): what a cost cell's markdown says the lesson trains live and loads."
    found = [re.search(rf'^{re.escape(k)}\s*(.*)$', source, re.M) for k in (TRAINED_ITEM, LOADED_ITEM)]
    if not all(found):
        raise ValueError(f'a cost cell wants the items {TRAINED_ITEM!r} and {LOADED_ITEM!r}; got {source!r}')
    return tuple(m[1] for m in found)


def _lines(text):
    "A cell's source as notebooks store it: a list of lines, each but the last ending in a newline."
    return text.splitlines(keepends=True)


def lesson_headers(nb, name, what=None, results=None):
    "`nb` (a notebook dict) with its Colab cell and cost cell current; `what` = (trained, loaded) for a new cost cell."
    cells = nb['cells']
    src = lambda c: ''.join(c['source'])
    colab = [c for c in cells if c['cell_type'] == 'code' and 'google.colab' in src(c) and "'pip'" in src(c)]
    if len(colab) != 1:
        raise ValueError(f"{name}: wants one Colab install cell (code naming google.colab and 'pip'); got {len(colab)}")
    colab[0]['source'] = _lines(colab_source())
    cost = [c for c in cells if c['cell_type'] == 'markdown' and src(c).startswith(COST_HEAD)]
    if cost:
        cost[0]['source'] = _lines(cost_source(name, *(what or cost_items(src(cost[0]))), results))
    elif what:
        badge = next(i for i, c in enumerate(cells) if 'colab-badge.svg' in src(c))
        source = _lines(cost_source(name, *what, results))
        cells.insert(badge + 1, dict(cell_type='markdown', id=secrets.token_hex(4), metadata={}, source=source))
    else:
        raise ValueError(
            f'{name} has no cost cell yet: add a markdown cell after its badge that starts with '
            f'{COST_HEAD!r} and holds the items {TRAINED_ITEM!r} and {LOADED_ITEM!r}, then run '
            '`course.py headers` again'
        )
    return nb


def headers(*nbs, what=None, results=None):
    "Rewrite lessons' Colab cell (settings.ini's version) and cost line (benchmarks/results.json), then clean them."
    changed = []
    for f in map(Path, nbs or lessons()):
        text = f.read_text()
        nb = lesson_headers(json.loads(text), f.name, (what or {}).get(f.stem), results)
        new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + '\n'  # as nbdev writes notebooks
        if new != text:
            f.write_text(new)
            changed.append(f)
    for f in changed:
        sh(BIN / 'nbdev_clean', '--fname', f)
    log(f'lesson headers: {len(changed)} of {len(nbs or lessons())} notebooks rewritten')
    return changed


CMDS = dict(
    setup=setup,
    build=build,
    test=test,
    run=run,
    lab=lab,
    headers=lambda *nbs: (setup(), headers(*nbs)),
    export=lambda: (setup(), export()),
)

if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in CMDS:
        sys.exit(f'usage: python3 tools/course.py {{{"|".join(CMDS)}}} (got {sys.argv[1:] or "nothing"})')
    CMDS[sys.argv[1]](*sys.argv[2:])
