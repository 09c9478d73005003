"""Loading weights runs no code: crafted files get clear errors from artifacts.load (through load_pretrained) and
load_checkpoint; none writes."""

import json, os, re, subprocess, sys
from pathlib import Path

import pytest, torch
import torch.nn as nn
from safetensors.torch import save_file

from diffcourse.artifacts import FORMAT, architecture
from diffcourse.core import ARCHITECTURES, ARCHITECTURE_MODULES, WEIGHTS_DIR, register_architecture, weights_path
from diffcourse.core import load_safetensors
from diffcourse.training import (
    ToyMLP,
    load_pretrained,
    save_pretrained,
    save_checkpoint,
    load_checkpoint,
)

REPO = Path(__file__).parent.parent
SHIPPED = weights_path('toy_mlp_gaussian_mixture.safetensors')


def listing(d: Path) -> list:
    "Every file and folder under `d`, to show that a call wrote nothing."
    return sorted(str(p.relative_to(d)) for p in d.rglob('*'))


def craft(path: Path, tensors: dict = None, drop=(), arch=KeyError, config=KeyError, **meta) -> Path:
    """The shipped toy model's file with some metadata replaced (raw strings: not JSON-encoded for us) or dropped;
    `arch` and `config` replace its model's (a config that is not JSON goes in as a JSON string; 'arch' in `drop`:
    the architecture None)."""
    t, m = load_safetensors(SHIPPED)
    spec = json.loads(m['models'])['']
    if arch is not KeyError or 'arch' in drop:
        spec['arch'] = None if 'arch' in drop else arch
    if config is not KeyError:
        try:
            spec['config'] = json.loads(config)
        except ValueError:
            spec['config'] = config
    m = {k: v for k, v in {**m, 'models': json.dumps({'': spec}), **meta}.items() if k not in drop}
    save_file(t if tensors is None else tensors, str(path), metadata=m)
    return path


@pytest.fixture
def watched(tmp_path, monkeypatch):
    "A folder that is also the working directory, with a target path that a crafted file would try to write."
    monkeypatch.chdir(tmp_path)
    target = tmp_path / 'pwned.safetensors'
    yield tmp_path, target
    assert not target.exists()


# --- the architecture a file names ------------------------------------------------------------------------------------
FUNCTIONS = [
    'diffcourse.core.save_safetensors',
    'diffcourse.training.save_pretrained',
    'diffcourse.training.train',
    'diffcourse.core.register_architecture',
    'os.system',
    'subprocess.run',
    'builtins.exec',
    'builtins.eval',
    'diffcourse.training.ARCHITECTURES',
    'pathlib.Path.write_text',
    '__main__.main',
]


@pytest.mark.parametrize('arch', FUNCTIONS)
def test_a_function_named_as_the_architecture_is_refused_and_runs_nothing(watched, arch):
    d, target = watched
    config = {'tensors': {}, 'path': str(target), 'command': f'touch {target}', 'source': f"open({str(target)!r}, 'w')"}
    f = craft(d / 'crafted.safetensors', arch=arch, config=json.dumps(config))
    before = listing(d)
    want = rf"crafted.safetensors' names the architecture '{re.escape(arch)}', which is not registered; .*'diffco"
    with pytest.raises(ValueError, match=want):
        load_pretrained(f)
    assert listing(d) == before and not target.exists()


def test_an_unknown_or_missing_architecture_lists_the_valid_ones(watched):
    d, _ = watched
    for name, kw in [('unknown', dict(arch='diffcourse.unet.UNet3D')), ('missing', dict(drop=('arch',)))]:
        f = craft(d / f'{name}.safetensors', **kw)
        before = listing(d)
        want = r"which is not registered; loading builds only the registered architectures \[.*'diffcourse.metrics"
        with pytest.raises(ValueError, match=want):
            load_pretrained(f)
        assert listing(d) == before


def test_every_shipped_architecture_is_registered_in_a_fresh_interpreter():
    "The registry is complete whatever was imported before: here nothing but diffcourse.training."
    code = (
        "from diffcourse.training import load_pretrained\n"
        "for n in ('digits_unet', 'toy_mlp_gaussian_mixture', 'classifier_digits', 'digits_noisy_classifier'):\n"
        "    print(type(load_pretrained(n)[0]).__name__)"
    )
    r = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['UNet', 'ToyMLP', 'SmallCNN', 'NoisyClassifier']
    assert all(m.startswith('diffcourse.') for m in ARCHITECTURE_MODULES)


def test_every_shipped_weights_file_names_a_registered_architecture():
    for p in sorted(WEIGHTS_DIR.glob('*.safetensors')):
        _, meta = load_safetensors(p)
        assert meta['format'] == FORMAT, p.name
        for spec in json.loads(meta['models']).values():
            assert architecture(spec['arch']) is ARCHITECTURES[spec['arch']], (p.name, spec['arch'])


# --- the config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'config,match',
    [
        ('{"dim": 2, "hidden": 128, "depth": 3, "temb_dim": 32, "path": "x"}', r"unknown keys \['path'\]"),
        ('{"dim": 2, "width": 128}', r"does not fit ToyMLP\(dim, hidden, depth, temb_dim, num_classes\): unknown keys"),
        ('not json {', r"the config of a ToyMLP must be a JSON object, got '\"not json \{\"'"),
        ('[2, 128, 3]', r"the config of a ToyMLP must be a JSON object, got '\[2, 128, 3\]'"),
        ('null', r"the config of a ToyMLP must be a JSON object, got 'null'"),
        ('"dim=2"', r"must be a JSON object"),
        (
            '{"dim": "two"}',
            r"does not build a diffcourse.training.ToyMLP: ToyMLP: dim must be an integer >= 1, got 'two'",
        ),
        ('{"hidden": -5}', r"ToyMLP: hidden must be an integer >= 1, got -5"),
    ],
)
def test_a_bad_config_is_refused_before_anything_is_built(watched, config, match):
    d, _ = watched
    f = craft(d / 'bad_config.safetensors', config=config)
    before = listing(d)
    with pytest.raises(ValueError, match=rf"weights '.*bad_config.safetensors'.*{match}"):
        load_pretrained(f)
    assert listing(d) == before


class _Needs(nn.Module):
    "A registered class with a required argument (the course's classes have defaults for all)."

    def __init__(self, width: int):
        super().__init__()
        self.config = dict(width=width)
        self.lin = nn.Linear(width, width)


def test_a_missing_required_config_key_is_named(watched):
    d, _ = watched
    register_architecture(_Needs)
    name = f'{_Needs.__module__}._Needs'
    try:
        p = save_pretrained(_Needs(3), d / 'needs.safetensors')
        assert type(load_pretrained(p)[0]) is _Needs  # the round trip works...
        f = craft(d / 'needs_bad.safetensors', tensors=load_safetensors(p)[0], arch=name, config='{}')
        with pytest.raises(ValueError, match=r"does not fit _Needs\(width\): missing required keys \['width'\]"):
            load_pretrained(f)  # ...and the missing key is named
    finally:
        del ARCHITECTURES[name]


class _Spy(ToyMLP):
    "ToyMLP that records on which device each instance was built."

    devices = []

    def __init__(self, dim=2, hidden=128, depth=3, temb_dim=32, num_classes=None):  # explicit: the config is checked
        _Spy.devices.append(torch.empty(0).device.type)
        super().__init__(dim, hidden, depth, temb_dim, num_classes)


def test_names_and_shapes_are_compared_on_the_meta_device_before_the_real_build(watched):
    d, _ = watched
    register_architecture(_Spy)
    name = f'{_Spy.__module__}._Spy'
    t, _ = load_safetensors(SHIPPED)
    try:
        cases = [
            (dict(config=json.dumps({'hidden': 64})), r"shape mismatches \(\d+\): \['blocks.0.0.bias: \(128,\) in"),
            (dict(config=json.dumps({'hidden': 10**6})), r"shape mismatches"),  # on meta: no terabytes allocated
            (dict(tensors={k: v for k, v in t.items() if k != 'out.2.bias'}), r"missing keys \(1\): \['out.2.bias'\]"),
            (dict(tensors={**t, 'extra.weight': torch.zeros(3)}), r"unexpected keys \(1\): \['extra.weight'\]"),
        ]
        for i, (kw, match) in enumerate(cases):
            _Spy.devices.clear()
            f = craft(d / f'shapes{i}.safetensors', arch=name, **kw)
            before = listing(d)
            with pytest.raises(ValueError, match=rf"'.*shapes{i}.safetensors' does not fit the model .*{match}"):
                load_pretrained(f)
            assert _Spy.devices == ['meta'] and listing(d) == before  # the real model was never built
        _Spy.devices.clear()
        assert type(load_pretrained(craft(d / 'ok.safetensors', arch=name))[0]) is _Spy
        assert _Spy.devices == ['meta', 'cpu']
    finally:
        del ARCHITECTURES[name]


@pytest.mark.parametrize(
    'meta,match',
    [
        (
            dict(format='diffcourse.checkpoint/1'),
            r"not a diffcourse weights file: expected metadata format 'diffcourse.artifact/1'",
        ),
        (dict(drop=('format',)), r"is not a diffcourse weights file: .*got None"),
        (dict(drop=('models',)), r"has no 'models' entry in its metadata"),
        (dict(models='not json {'), r"its metadata 'models' must be a JSON object, got text that is not JSON"),
        (dict(models='{"": {"arch": "diffcourse.training.ToyMLP"}}'), r"its model '' must be a JSON object \{arch, co"),
        (dict(info='[1]'), r"its metadata 'info' must be a JSON object, got '\[1\]'"),
    ],
)
def test_wrong_format_or_missing_metadata(watched, meta, match):
    d, _ = watched
    f = craft(d / 'fmt.safetensors', **meta)
    with pytest.raises(ValueError, match=match):
        load_pretrained(f)


def test_not_a_safetensors_file_and_bad_names(watched):
    d, _ = watched
    (d / 'pickle.safetensors').write_bytes(b'\x80\x04\x95' + b'\x00' * 64)  # a pickle is not a safetensors file
    with pytest.raises(ValueError, match='is not a valid safetensors file'):
        load_pretrained(d / 'pickle.safetensors')
    with pytest.raises(TypeError, match='wants a shipped name or a path, got int'):
        load_pretrained(3)
    with pytest.raises(FileNotFoundError, match="No shipped weights named 'nope.safetensors'"):
        load_pretrained('nope')


def test_save_pretrained_refuses_what_load_pretrained_could_not_build(tmp_path):
    class Unregistered(ToyMLP):
        pass

    with pytest.raises(ValueError, match=r"Unregistered is not a registered architecture.*@register_architecture"):
        save_pretrained(Unregistered(), tmp_path / 'u.safetensors')
    assert listing(tmp_path) == []


# --- checkpoints -------------------------------------------------------------------------------------------------
def _checkpoint(path):
    "A real checkpoint (model, EMA, AdamW state after one step, losses, RNG) to tamper with."
    torch.manual_seed(0)
    m = ToyMLP(hidden=16)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 2), 0).pow(2).mean().backward()
    opt.step()
    return save_checkpoint(
        path, m, opt, ToyMLP(hidden=16), [1.0, 0.5], {'cpu': torch.get_rng_state()[None]}, step=1, epoch=0, batch=1
    )


def _tamper(src, dst, tensors=None, drop=(), **meta):
    t, m = load_safetensors(src)
    t = tensors(t) if tensors is not None else t
    save_file(t, str(dst), metadata={k: v for k, v in {**m, **meta}.items() if k not in drop})
    return dst


CHECKPOINT_CASES = [
    (dict(info='{"step": 1'), r"its metadata 'info' must be a JSON object, got text that is not JSON"),
    (dict(info='[1, 0, 1]'), r"its metadata 'info' must be a JSON object, got '\[1, 0, 1\]'"),
    (dict(config='ToyMLP(16)'), r"its metadata 'config' must be a JSON object or null, got text that is not JSON"),
    (dict(optim_groups='{"lr": 1}'), r"its metadata 'optim_groups' must be a JSON list"),
    (dict(optim_scalars='oops'), r"its metadata 'optim_scalars' must be a JSON object"),
    (dict(optimizer='SGD'), r"holds a SGD state, but the optimizer is a AdamW"),
    (dict(drop=('optim_groups',)), r"holds no optimizer state"),
    (dict(format='diffcourse.weights/1'), r"is not a diffcourse checkpoint"),
    (dict(tensors=lambda t: {**t, 'optim.0.exp_avg': torch.zeros(3, 3)}), r"'0.exp_avg' has shape \(3, 3\), the param"),
    (dict(tensors=lambda t: {**t, 'optim.x.exp_avg': torch.zeros(3)}), r"has an entry 'x.exp_avg' for no parameter"),
    (dict(tensors=lambda t: {**t, 'optim.99.exp_avg': torch.zeros(3)}), r"entry '99.exp_avg' for no parameter"),
    (dict(tensors=lambda t: {**t, 'ema.inp.weight': torch.zeros(2, 2)}), r"the EMA weights of checkpoint .* mism"),
    (dict(tensors=lambda t: {k: v for k, v in t.items() if not k.startswith('ema.')}), r"holds no EMA weights"),
    (dict(tensors=lambda t: {**t, 'model.inp.bias': torch.zeros(17)}), r"does not fit .*inp.bias: \(17,\) in the file"),
    (dict(tensors=lambda t: {**t, 'rng.cpu': torch.zeros(5)}), r"not what save_checkpoint writes: \['rng.cpu'\]"),
    (dict(tensors=lambda t: {**t, 'losses': torch.zeros(2, 2)}), r"not what save_checkpoint writes: \['losses'\]"),
]


@pytest.mark.parametrize('change,match', CHECKPOINT_CASES)
def test_a_tampered_checkpoint_is_refused_before_anything_is_loaded(tmp_path, change, match):
    good = _checkpoint(tmp_path / 'good.safetensors')
    f = _tamper(good, tmp_path / 'bad.safetensors', **change)
    torch.manual_seed(1)
    m, ema = ToyMLP(hidden=16), ToyMLP(hidden=16)
    opt = torch.optim.AdamW(m.parameters())
    before = [p.clone() for p in [*m.parameters(), *ema.parameters()]]
    files = listing(tmp_path)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint(f, m, opt, ema)
    assert 'bad.safetensors' in str(e.value)  # the error names the file
    assert all(torch.equal(a, b) for a, b in zip(before, [*m.parameters(), *ema.parameters()]))  # nothing loaded
    assert opt.state_dict()['state'] == {} and listing(tmp_path) == files  # nothing written


def test_the_untampered_checkpoint_loads(tmp_path):
    good = _checkpoint(tmp_path / 'good.safetensors')
    m, ema = ToyMLP(hidden=16), ToyMLP(hidden=16)
    opt = torch.optim.AdamW(m.parameters())
    info = load_checkpoint(good, m, opt, ema)
    assert info['step'] == 1 and info['losses'] == [1.0, 0.5]
    assert set(opt.state_dict()['state']) == set(range(len(opt.param_groups[0]['params'])))


# --- no unpickling anywhere ---------------------------------------------------------------------------------------
def _torch_load_calls(text: str) -> list:
    "The argument text of every torch.load(...) call in `text`."
    calls = []
    for m in re.finditer(r'torch\.load\(', text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {'(': 1, ')': -1}.get(text[i], 0)
            i += 1
        calls.append(text[m.end() : i - 1])
    return calls


def test_no_torch_load_without_weights_only_anywhere_in_the_repo():
    "settings.ini allows torch >= 2.1, where torch.load unpickles (runs code) unless weights_only=True."
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(('.', '_')) and d not in ('node_modules', 'runs')]
        files += [Path(root) / n for n in names if n.endswith(('.py', '.ipynb', '.md', '.sh'))]
    bad = []
    for p in files:
        text = p.read_text(errors='replace')
        if p.suffix == '.ipynb':
            text = '\n'.join(''.join(c['source']) for c in json.loads(text)['cells'])
        bad += [
            f'{p.relative_to(REPO)}: torch.load({a})'
            for a in _torch_load_calls(text)
            if not re.search(r'weights_only\s*=\s*True', a) and p.name != Path(__file__).name
        ]
    assert not bad, bad
