import os
import torch, pytest
from diffcourse.core import append_dims, save_safetensors, load_safetensors, get_device, image_grid

def test_append_dims_broadcasts_per_sample():
    x = torch.randn(4, 3, 5, 5); s = torch.tensor([0., 1., 2., 3.])
    assert torch.equal(append_dims(s, x.ndim) * x, torch.stack([v * xi for v, xi in zip(s, x)]))

def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    p = save_safetensors({'w': torch.ones(3)}, tmp_path/'ck.safetensors')
    import diffcourse.core as core
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(core.os, 'replace', boom)
    with pytest.raises(OSError, match='disk full'):
        save_safetensors({'w': torch.zeros(3)}, p)
    monkeypatch.undo()
    assert torch.equal(load_safetensors(p)[0]['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['ck.safetensors']

def test_get_device_rejects_unknown():
    with pytest.raises(ValueError, match="valid choices"): get_device('gpu')

def test_image_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"): image_grid(torch.zeros(3, 8, 8))
