"""The wheel and sdist carry the library (and its shipped weights) and install and import in a clean environment."""

import os, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    r = subprocess.run(
        [sys.executable, '-m', 'build', '--no-isolation', '--sdist', '--wheel', '--outdir', str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _modules():
    return sorted(p.name for p in (ROOT / 'diffcourse').glob('*.py'))


def _weights():
    return (
        sorted(p.name for p in (ROOT / 'diffcourse' / 'weights').rglob('*') if p.is_file())
        if (ROOT / 'diffcourse' / 'weights').exists()
        else []
    )


def test_wheel_has_every_module_and_weight(dists):
    (whl,) = dists.glob('*.whl')
    names = zipfile.ZipFile(whl).namelist()
    for m in _modules():
        assert f'diffcourse/{m}' in names, m
    for w in _weights():
        assert any(n.startswith('diffcourse/weights/') and n.endswith(w) for n in names), w


def test_sdist_has_settings_and_weights(dists):
    (sdist,) = dists.glob('*.tar.gz')
    names = tarfile.open(sdist).getnames()
    assert any(n.endswith('/settings.ini') for n in names)
    for w in _weights():
        assert any(n.endswith(w) for n in names), w


def test_wheel_installs_and_imports_in_a_clean_location(dists, tmp_path):
    (whl,) = dists.glob('*.whl')
    target = tmp_path / 'site'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--target', str(target), str(whl)],
        check=True,
    )
    code = (
        'import diffcourse, diffcourse._modidx, importlib; '
        'mods = [m for m in diffcourse._modidx.d["syms"]]; [importlib.import_module(m) for m in mods]; '
        'print(diffcourse.__file__); print(diffcourse.__version__)'
    )
    env = {**os.environ, 'PYTHONPATH': str(target)}
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    path, version = r.stdout.split()
    assert Path(path).is_relative_to(target), path  # the installed copy, not the editable checkout
    assert version == next(
        l.split('=')[1].strip() for l in (ROOT / 'settings.ini').read_text().splitlines() if l.startswith('version')
    )
