import os
import torch, pytest
from diffcourse.core import append_dims, save_safetensors, load_safetensors, get_device, image_grid


def test_append_dims_broadcasts_per_sample():
    x = torch.randn(4, 3, 5, 5)
    s = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert torch.equal(append_dims(s, x.ndim) * x, torch.stack([v * xi for v, xi in zip(s, x)]))


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    p = save_safetensors({'w': torch.ones(3)}, tmp_path / 'ck.safetensors')
    import diffcourse.core as core

    def boom(*a, **k):
        raise OSError('disk full')

    monkeypatch.setattr(core.os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'):
        save_safetensors({'w': torch.zeros(3)}, p)
    monkeypatch.undo()
    assert torch.equal(load_safetensors(p)[0]['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['ck.safetensors']


def test_get_device_rejects_unknown():
    with pytest.raises(ValueError, match="valid choices"):
        get_device('gpu')


def test_image_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_grid(torch.zeros(3, 8, 8))


# --- checks at the door ---------------------------------------------------------------------------------------------
from diffcourse.core import (
    check_number,
    seed_everything,
    show_images,
    weights_path,
    check_writable,
    remove_stale_temps,
    register_architecture,
)


@pytest.mark.parametrize(
    'args,kw,err,match',
    [
        ((0, 'steps', 1), dict(integer=True), ValueError, r'^steps must be an integer >= 1, got 0$'),
        ((1.5, 'steps', 1), dict(integer=True), TypeError, r'steps must be an integer >= 1, got 1.5 of type float'),
        ((False, 'n', 0), dict(integer=True), TypeError, r'got False of type bool'),
        ((float('inf'), 'lr', 0), dict(lo_open=True), ValueError, r'lr must be a finite number > 0, got inf'),
        ((float('nan'), 'x'), {}, ValueError, r'x must be a finite number, got nan'),
        ((1, 'p', 0, 1), dict(hi_open=True), ValueError, r'p must be a finite number >= 0 and < 1, got 1'),
        (('3', 'n'), {}, TypeError, r"n must be a finite number, got '3' of type str"),
        ((None, 'n', 0), {}, TypeError, r'got None of type NoneType'),
    ],
)
def test_check_number_names_the_argument_the_value_and_the_range(args, kw, err, match):
    with pytest.raises(err, match=match):
        check_number(*args, **kw)


def test_check_number_returns_valid_values():
    import numpy as np

    assert check_number(3, 'n', 1, integer=True) == 3 and check_number(np.int64(3), 'n', 1, integer=True) == 3
    assert check_number(0.0, 'ema', 0, 1, hi_open=True) == 0.0 and check_number(np.float32(0.5), 'p', 0, 1) == 0.5


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r'seed must be an integer >= 0 and <= 4294967295, got -1'):
        seed_everything(-1)
    with pytest.raises(TypeError, match=r'seed must be an integer .*got 1.5 of type float'):
        seed_everything(1.5)
    with pytest.raises(ValueError, match=r'nrow must be an integer >= 1, got 0'):
        image_grid(torch.zeros(2, 1, 4, 4), nrow=0)
    with pytest.raises(ValueError, match=r'pad must be an integer >= 0, got -1'):
        image_grid(torch.zeros(2, 1, 4, 4), pad=-1)
    with pytest.raises(ValueError, match=r'B >= 1, got shape \(0, 1, 4, 4\)'):
        image_grid(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match=r'got shape list'):
        image_grid([torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match=r'with C = 1 or 3, got shape \(2, 4, 4, 4\)'):
        show_images(torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match=r'got 1 titles for 2 images'):
        show_images(torch.zeros(2, 1, 4, 4), titles=['a'])
    with pytest.raises(ValueError, match=r"without folders, got '../settings.ini'"):
        weights_path('../settings.ini')
    with pytest.raises(ValueError, match=r"without folders, got ''"):
        weights_path('')
    with pytest.raises(TypeError, match='wants an nn.Module subclass'):
        register_architecture(torch.nn.Linear(2, 2))


def test_save_safetensors_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match=r"wants a dict from names \(str\) to tensors, got list"):
        save_safetensors([torch.ones(2)], tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match=r"these entries are not: \['b', 3\]"):
        save_safetensors({'a': torch.ones(2), 'b': [1.0, 2.0], 3: torch.ones(1)}, tmp_path / 'a.safetensors')
    (tmp_path / 'file').write_text('')
    with pytest.raises(ValueError, match=r"'.*file/a.safetensors' cannot be written: '.*file' is a file, not a folder"):
        save_safetensors({'a': torch.ones(2)}, tmp_path / 'file' / 'a.safetensors')
    with pytest.raises(ValueError, match=r'is a folder; it must name a file'):
        save_safetensors({'a': torch.ones(2)}, tmp_path)
    assert os.listdir(tmp_path) == ['file']


# --- nothing left behind ----------------------------------------------------------------------------------------
def test_the_next_save_removes_what_a_killed_save_left_and_nothing_else(tmp_path):
    p = tmp_path / 'ck.safetensors'
    stale = ['.ck.safetensors.0badc0de.tmp', '.ck.safetensors.12345678.tmp']  # the names save_safetensors uses
    others = [
        '.ck.safetensors.bak.0badc0de.tmp',  # the temporary of 'ck.safetensors.bak'
        '.ck.safetensors.0BADC0DE.tmp',  # not 8 lower-case hex digits
        '.ck.safetensors.0badc0de.tmp.keep',
        'x.ck.safetensors.0badc0de.tmp',
        '.ck.0badc0de.tmp',
        '.dk.safetensors.0badc0de.tmp',
        'ck.safetensors.0badc0de.tmp',
    ]
    for n in stale + others:
        (tmp_path / n).write_bytes(b'half a file')
    save_safetensors({'w': torch.ones(3)}, p)
    assert sorted(os.listdir(tmp_path)) == sorted(others + ['ck.safetensors'])
    assert remove_stale_temps(p) == [] and remove_stale_temps(tmp_path / 'missing' / 'x.safetensors') == []


def test_a_save_killed_mid_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    "Kill a real save between the write and the rename (SIGKILL: no cleanup runs), then save again."
    import signal, subprocess, sys, textwrap

    code = textwrap.dedent(f'''
        import os, torch
        import diffcourse.core as core
        def killed(*a): os.kill(os.getpid(), {int(signal.SIGKILL)})
        core.os.replace = killed
        core.save_safetensors({{'w': torch.ones(1000)}}, {str(tmp_path / 'ck.safetensors')!r})
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith('.ck.safetensors.') and left[0].endswith('.tmp')
    save_safetensors({'w': torch.zeros(2)}, tmp_path / 'ck.safetensors')
    assert os.listdir(tmp_path) == ['ck.safetensors']


def test_check_writable_probes_without_leaving_anything(tmp_path):
    check_writable(tmp_path / 'a' / 'b' / 'ck.safetensors')  # a folder to be made later is fine
    check_writable(tmp_path / 'ck.safetensors')
    assert os.listdir(tmp_path) == []
