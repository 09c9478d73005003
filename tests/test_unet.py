"Lesson 05: the U-Net's parts, its conditioning inputs and errors, and its equality with diffusers' UNet2DModel."
import math
import pytest, torch
import torch.nn as nn

from diffcourse.core import seed_everything
from diffcourse.data import get_dataloader
from diffcourse.schedules import Schedule
from diffcourse.training import timestep_embedding, train, ddpm_loss, save_pretrained, load_pretrained
from diffcourse.unet import UNet, Attention, ResBlock, from_diffusers

def diffusers_unet(channels=(16, 32, 64), attn=(False, False, True), layers=1, groups=8, head_dim=16, in_ch=1):
    from diffusers import UNet2DModel
    down = tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attn)
    up = tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in attn[::-1])
    return UNet2DModel(sample_size=16, in_channels=in_ch, out_channels=in_ch, block_out_channels=channels, layers_per_block=layers,
                       down_block_types=down, up_block_types=up, norm_num_groups=groups, attention_head_dim=head_dim)

@pytest.mark.parametrize('kw,shape', [
    (dict(channels=(16, 32, 64), attn=(False, False, True)), (3, 1, 16, 16)),
    (dict(channels=(8, 16), attn=(True, True), layers=2), (1, 1, 8, 6)),
    (dict(in_channels=3, out_channels=6, channels=(16, 16, 32, 32), attn=(False, True, False, True), heads=2), (2, 3, 16, 24)),
    (dict(in_channels=4, out_channels=4, channels=(16, 32), attn=(False, True), num_classes=5, context_dim=12), (2, 4, 8, 8)),
])
def test_output_shapes(kw, shape):
    m = UNet(**kw)
    out_ch = kw.get('out_channels', 1)
    assert m(torch.randn(shape), torch.arange(shape[0])).shape == (shape[0], out_ch, *shape[2:])

def test_bad_inputs_get_clear_errors():
    m = UNet(channels=(16, 32, 64), attn=(False, False, True))
    with pytest.raises(ValueError, match=r'both must be multiples of 4, got H=18, W=16'): m(torch.randn(1, 1, 18, 16), 0)
    with pytest.raises(ValueError, match=r'UNet wants x of shape \(B, 1, H, W\), got \(1, 3, 16, 16\)'): m(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match=r'UNet wants x of shape \(B, 1, H, W\), got \(16, 16\)'): m(torch.randn(16, 16), 0)
    with pytest.raises(ValueError, match='num_classes=None'): m(torch.randn(1, 1, 16, 16), 0, class_labels=torch.zeros(1))
    with pytest.raises(ValueError, match='context_dim=None'): m(torch.randn(1, 1, 16, 16), 0, context=torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r'multiple of groups=8; \[12\]'): UNet(channels=(16, 12))
    with pytest.raises(ValueError, match='one flag per level'): UNet(channels=(16, 32), attn=(True,))

def test_class_conditioning_with_a_null_class_and_cross_attention():
    torch.manual_seed(0)
    m = UNet(channels=(16, 32), attn=(False, True), num_classes=10, context_dim=8)
    nn.init.normal_(m.conv_out.weight, std=0.1)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(m(x, 4), m(x, 4, class_labels=torch.full((3,), 10)))
    assert not torch.allclose(m(x, 4, class_labels=torch.tensor([1, 2, 3])), m(x, 4))
    assert not torch.allclose(m(x, 4, context=torch.randn(3, 5, 8)), m(x, 4))
    with pytest.raises(ValueError, match=r'class_labels must lie in \[0, 10\]'): m(x, 4, class_labels=torch.tensor([0, 1, 12]))
    with pytest.raises(ValueError, match=r'context of shape \(B, L, 8\)'): m(x, 4, context=torch.randn(3, 5, 9))

def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0, 3, 250, 999])
    torch.testing.assert_close(timestep_embedding(t, 64), get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0))

def _attention_ref(att, x, context=None):
    "Attention written out: explicit scores, softmax and weighted sum, one head at a time."
    B, C, H, W = x.shape; d = C // att.heads
    h = att.norm(x).flatten(2).transpose(1, 2)                               # (B, HW, C)
    q, (k, v) = att.q(h), att.kv(h if context is None else context).chunk(2, -1)
    outs = [torch.softmax(q[..., i*d:(i+1)*d] @ k[..., i*d:(i+1)*d].transpose(1, 2) / math.sqrt(d), -1) @ v[..., i*d:(i+1)*d]
            for i in range(att.heads)]
    return x + att.out(torch.cat(outs, -1)).transpose(1, 2).reshape(B, C, H, W)

def test_attention_matches_explicit_softmax():
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 6)
    cross, self_ = Attention(16, heads=2, context_dim=6), Attention(16, heads=4)
    torch.testing.assert_close(cross(x, ctx), _attention_ref(cross, x, ctx), atol=1e-5, rtol=0)
    torch.testing.assert_close(self_(x), _attention_ref(self_, x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='channels=30 must be divisible by heads=4'): Attention(30, heads=4)

def test_resblock_uses_the_embedding():
    rb = ResBlock(8, 16, 32)
    x = torch.randn(2, 8, 4, 4)
    assert rb(x, torch.randn(2, 32)).shape == (2, 16, 4, 4)
    assert not torch.allclose(rb(x, torch.zeros(2, 32)), rb(x, torch.ones(2, 32)))

@pytest.mark.parametrize('kw', [dict(), dict(channels=(32, 64, 64, 64), attn=(False, True, False, True), layers=2, groups=16, head_dim=16, in_ch=3)])
def test_same_function_as_diffusers_unet2dmodel(kw):
    d = diffusers_unet(**kw)
    torch.manual_seed(0)
    for p in d.parameters(): nn.init.normal_(p, std=0.1)
    ours = from_diffusers(d)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in d.parameters())
    c = kw.get('in_ch', 1)
    x, t = torch.randn(3, c, 16, 16), torch.tensor([0, 400, 999])
    with torch.no_grad(): a, b = ours(x, t), d(x, t).sample
    torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=0)

def test_from_diffusers_rejects_what_it_cannot_map():
    from diffusers import UNet2DModel
    d = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=('DownBlock2D', 'SkipDownBlock2D'), up_block_types=('SkipUpBlock2D', 'UpBlock2D'), norm_num_groups=8)
    with pytest.raises(ValueError, match="from_diffusers supports down blocks"): from_diffusers(d)

def test_save_and_load_pretrained_round_trip(tmp_path):
    m = UNet(channels=(8, 16), attn=(False, True), num_classes=3, context_dim=4)
    p = save_pretrained(m, tmp_path/'u.safetensors', objective='v', T=500)
    m2, info = load_pretrained(p)
    assert info['objective'] == 'v' and info['T'] == 500 and info['config']['num_classes'] == 3
    x, ctx = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 4)
    torch.testing.assert_close(m(x, 3, class_labels=torch.tensor([0, 2]), context=ctx), m2(x, 3, class_labels=torch.tensor([0, 2]), context=ctx))

def test_shipped_digits_unet_is_a_unet_for_16x16_digits():
    m, info = load_pretrained('digits_unet')
    assert isinstance(m, UNet) and info['config']['in_channels'] == 1
    with torch.no_grad(): assert m(torch.randn(2, 1, 16, 16), torch.tensor([10, 900])).shape == (2, 1, 16, 16)

def test_brief_training_on_digits_lowers_the_loss():
    torch.manual_seed(0)
    sched = Schedule.from_name('linear', T=1000)
    dl = get_dataloader('digits', batch_size=32, generator=seed_everything(0))
    st = train(UNet(channels=(8, 16), attn=(False, True)), lambda m, b: ddpm_loss(m, b[0], sched), dl, 25, 3e-3, warmup=2, progress=False)
    assert sum(st.losses[-5:]) < sum(st.losses[:5])
