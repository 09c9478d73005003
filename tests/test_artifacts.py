"""Every shipped file is declared once, loads by its name, carries the recipe its declaration states and the hash the
manifest records; `tools/weights.py --check` says so and notices tampering; `tools/weights.py NAME` reproduces one."""

import dataclasses, importlib.util, json, shutil, sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from diffcourse.artifacts import ARTIFACTS, FORMAT, Loaded, describe, load, manifest, read, save
from diffcourse.core import WEIGHTS_DIR, load_safetensors, weights_path
from diffcourse.schedules import check_prediction_type
from diffcourse.training import ToyMLP

REPO = Path(__file__).parent.parent
FASTEST = 'toy_mlp_v_gaussian_mixture_pd32'  # 300 steps of a 2-D MLP: about 20 s on one CPU thread


def _tool():
    "tools/weights.py as a module."
    spec = importlib.util.spec_from_file_location('weights_tool', REPO / 'tools' / 'weights.py')
    mod = importlib.util.module_from_spec(spec)
    sys.modules['weights_tool'] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def tool():
    return _tool()


def test_every_file_is_declared_and_every_declaration_has_its_file():
    files = sorted(p.name for p in WEIGHTS_DIR.glob('*.safetensors'))
    assert files == sorted(a.file for a in ARTIFACTS.values())
    assert sorted(manifest()) == files


@pytest.mark.parametrize('name', list(ARTIFACTS))
def test_every_declared_name_loads(name):
    a, loaded = ARTIFACTS[name], load(name)
    assert isinstance(loaded, Loaded) and loaded.info['artifact'] == name
    assert all(not m.training for m in loaded.models.values())
    if a.arch is not None:
        assert loaded.info['arch'] == a.arch and type(loaded.model).__name__ == a.arch.rsplit('.', 1)[1]
    if a.config is not None:
        assert loaded.info['config'] == a.config
    if a.prediction_type is not None:
        assert check_prediction_type(a.prediction_type) == a.prediction_type
        assert (loaded.info['prediction_type'], loaded.info['schedule'], loaded.info['T']) == (
            a.prediction_type,
            a.schedule,
            a.T,
        )
    if a.recipe == 'token':
        assert loaded.models == {} and list(loaded.tensors) == [a.args['token']]
    assert all(n in ARTIFACTS and list(ARTIFACTS).index(n) < list(ARTIFACTS).index(name) for n in a.needs)


def test_the_fastest_files_recipe_record_is_the_registrys():
    a = ARTIFACTS[FASTEST]
    _, meta = read(weights_path(a.file))
    assert json.loads(meta['recipe']) == a.recipe_record == {'key': 'progressive', 'args': a.args}
    assert meta['command'] == f'python tools/weights.py {FASTEST}' and describe(FASTEST)['final_loss'] == 9e-06


def test_check_passes_on_the_shipped_files(tool, capsys):
    assert tool.main(['--check']) == 0
    assert f'{len(ARTIFACTS)} of {len(ARTIFACTS)} declared files current: all' in capsys.readouterr().out


def test_check_fails_on_a_tampered_copy(tool, tmp_path, capsys):
    folder = tmp_path / 'weights'
    shutil.copytree(WEIGHTS_DIR, folder)
    f = folder / ARTIFACTS[FASTEST].file
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    f.write_bytes(bytes(data))
    (folder / 'stray.safetensors').write_bytes((folder / ARTIFACTS['digits_unet'].file).read_bytes())
    (folder / ARTIFACTS['glyph_vae'].file).unlink()
    assert tool.main(['--check', '--dir', str(folder)]) == 1
    out = capsys.readouterr().out
    assert f'{FASTEST}.safetensors: sha256 differs from manifest.json' in out
    assert 'stray.safetensors: not declared' in out and 'glyph_vae.safetensors: missing' in out


def test_check_fails_on_a_changed_recipe(tool, monkeypatch, capsys):
    a = ARTIFACTS['classifier_digits']
    monkeypatch.setitem(ARTIFACTS, a.name, dataclasses.replace(a, args={**a.args, 'steps': 4000}))
    assert tool.main(['--check']) == 1
    out = capsys.readouterr().out
    assert "classifier_digits.safetensors: its recipe {'key': 'classifier', 'args': {'classifier': 'digits', 'st" in out


def test_all_makes_nothing_when_every_file_is_current(tool, capsys):
    assert tool.make_all() == []


def test_a_new_file_is_one_declaration(tool, monkeypatch):
    "Declaring a file is all it takes for load, --check and the recipes to know it."
    from diffcourse.artifacts import declare

    monkeypatch.setattr('diffcourse.artifacts.ARTIFACTS', dict(ARTIFACTS))
    import diffcourse.artifacts as art

    a = declare('toy_new', lesson='04_ddpm', recipe='diffusion', args={}, data='-', prediction_type='epsilon')
    assert art.ARTIFACTS['toy_new'] is a and a.file == 'toy_new.safetensors' and a.recipe in tool.RECIPES
    with pytest.raises(ValueError, match=r"it needs \['nope'\], which are not declared"):
        declare('toy_newer', lesson='04_ddpm', recipe='diffusion', args={}, data='-', needs=('nope',))


# --- a crafted file cannot make load run code (the full set: tests/test_weights_safety.py) -------------------------
def _crafted(tmp_path, models=None, tensors=None, **meta):
    t, m = load_safetensors(weights_path('toy_mlp_gaussian_mixture.safetensors'))
    m = {**m, **({'models': json.dumps(models)} if models is not None else {}), **meta}
    save_file(t if tensors is None else tensors, str(tmp_path / 'crafted.safetensors'), metadata=m)
    return tmp_path / 'crafted.safetensors'


@pytest.mark.parametrize(
    'how, error',
    [
        (dict(models={'': {'arch': 'os.system', 'config': {'command': 'touch pwned'}}}), "names the architecture 'os"),
        (dict(models={'': {'arch': 'builtins.exec', 'config': {}}}), 'which is not registered'),
        (dict(models={'': {'arch': 'diffcourse.training.ToyMLP', 'config': {'__class__': 'x'}}}), "unknown keys"),
        (
            dict(models={'': {'arch': 'transformers.CLIPModel', 'config': {'auto_map': {'AutoModel': 'x.Y'}}}}),
            'unknown',
        ),
        (dict(models={'net': {'arch': 'diffcourse.training.ToyMLP', 'config': {}}}), 'belong to none of its models'),
        (dict(tokenizer='{"vocab": {}, "merges": []}'), 'keeps a tokenizer but no text encoder'),
        (dict(format='diffcourse.weights/1'), 'is not a diffcourse weights file'),
    ],
)
def test_a_crafted_file_runs_no_code(tmp_path, monkeypatch, how, error):
    monkeypatch.chdir(tmp_path)
    f = _crafted(tmp_path, **how)
    with pytest.raises(ValueError, match='crafted.safetensors') as e:
        load(f)
    assert error in str(e.value) and sorted(p.name for p in tmp_path.iterdir()) == ['crafted.safetensors']


def test_save_round_trips_several_models_and_refuses_what_load_could_not_build(tmp_path):
    a, b = ToyMLP(hidden=8), ToyMLP(hidden=16)
    p = save(tmp_path / 'two.safetensors', {'a': a, 'b': b}, half=True, steps=1)
    back = load(p)
    assert sorted(back.models) == ['a', 'b'] and back.info['steps'] == 1
    # float16 storage: |w| < 1 rounds by at most 2**-11 relative; 1e-3 absolute is well above that
    torch.testing.assert_close(
        back.models['b'].state_dict()['inp.weight'], b.state_dict()['inp.weight'], atol=1e-3, rtol=0
    )
    with pytest.raises(ValueError, match='each by a prefix'):
        save(tmp_path / 'bad.safetensors', {'': a, 'b': b})
    with pytest.raises(ValueError, match='needs a model with a `config`'):
        save(tmp_path / 'bad.safetensors', nn.Linear(2, 2))
    assert sorted(x.name for x in tmp_path.iterdir()) == ['two.safetensors']
    assert read(p)[1]['format'] == FORMAT


def test_the_fastest_file_is_reproduced_by_its_command(tool, tmp_path):
    "`python tools/weights.py NAME --out` for the fastest shipped file: its recipe and a converged loss, as recorded."
    out = tool.make(FASTEST, tmp_path / 'x.safetensors', runs=tmp_path / 'runs')
    shipped, again = describe(FASTEST), describe(out)
    assert again['recipe'] == shipped['recipe'] and again['command'] == shipped['command']
    assert again['steps'] == shipped['steps'] == 300 and again['teacher'] == shipped['teacher']
    assert again['final_loss'] < 1e-4  # the round's loss falls from ~5e-4 to ~1e-5; a broken recipe stays near 5e-4
    assert manifest()[ARTIFACTS[FASTEST].file] != 'x'  # the shipped manifest was not touched by --out
