"Lesson 05: the U-Net's parts, its conditioning inputs and errors, and its equality with diffusers' UNet2DModel."

import json, math
import pytest, torch
import torch.nn as nn

from diffcourse.core import seed_everything
from diffcourse.data import get_dataloader
from diffcourse.schedules import Schedule
from diffcourse.core import timestep_embedding
from diffcourse.training import train, ddpm_loss, save_pretrained, load_pretrained
from diffcourse.unet import UNet, Attention, ResBlock, from_diffusers


def diffusers_unet(channels=(16, 32, 64), attn=(False, False, True), layers=1, groups=8, head_dim=16, in_ch=1):
    from diffusers import UNet2DModel

    down = tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attn)
    up = tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in attn[::-1])
    return UNet2DModel(
        sample_size=16,
        in_channels=in_ch,
        out_channels=in_ch,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=groups,
        attention_head_dim=head_dim,
    )


@pytest.mark.parametrize(
    'kw,shape',
    [
        (dict(channels=(16, 32, 64), attn=(False, False, True)), (3, 1, 16, 16)),
        (dict(channels=(8, 16), attn=(True, True), layers=2), (1, 1, 8, 6)),
        (
            dict(in_channels=3, out_channels=6, channels=(16, 16, 32, 32), attn=(False, True, False, True), heads=2),
            (2, 3, 16, 24),
        ),
        (
            dict(in_channels=4, out_channels=4, channels=(16, 32), attn=(False, True), num_classes=5, context_dim=12),
            (2, 4, 8, 8),
        ),
    ],
)
def test_output_shapes(kw, shape):
    m = UNet(**kw)
    out_ch = kw.get('out_channels', 1)
    assert m(torch.randn(shape), torch.arange(shape[0])).shape == (shape[0], out_ch, *shape[2:])


def test_bad_inputs_get_clear_errors():
    m = UNet(channels=(16, 32, 64), attn=(False, False, True))
    with pytest.raises(ValueError, match=r'both must be multiples of 4, got H=18, W=16'):
        m(torch.randn(1, 1, 18, 16), 0)
    with pytest.raises(ValueError, match=r'UNet wants x of shape \(B, 1, H, W\), got \(1, 3, 16, 16\)'):
        m(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match=r'UNet wants x of shape \(B, 1, H, W\), got \(16, 16\)'):
        m(torch.randn(16, 16), 0)
    with pytest.raises(ValueError, match='num_classes=None'):
        m(torch.randn(1, 1, 16, 16), 0, class_labels=torch.zeros(1))
    with pytest.raises(ValueError, match='context_dim=None'):
        m(torch.randn(1, 1, 16, 16), 0, context=torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r'multiple of groups=8; \[12\]'):
        UNet(channels=(16, 12))
    with pytest.raises(ValueError, match='one flag per level'):
        UNet(channels=(16, 32), attn=(True,))


def test_class_conditioning_with_a_null_class_and_cross_attention():
    torch.manual_seed(0)
    m = UNet(channels=(16, 32), attn=(False, True), num_classes=10, context_dim=8)
    nn.init.normal_(m.conv_out.weight, std=0.1)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(m(x, 4), m(x, 4, class_labels=torch.full((3,), 10)))  # None is the null class: same sums
    assert not torch.allclose(m(x, 4, class_labels=torch.tensor([1, 2, 3])), m(x, 4))
    assert not torch.allclose(m(x, 4, context=torch.randn(3, 5, 8)), m(x, 4))
    with pytest.raises(ValueError, match=r'class_labels must lie in \[0, 10\]'):
        m(x, 4, class_labels=torch.tensor([0, 1, 12]))
    with pytest.raises(ValueError, match=r'context of shape \(B, L, 8\)'):
        m(x, 4, context=torch.randn(3, 5, 9))


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 3, 250, 999])
    # the same float32 operations in the same order, so equal today; rounding the angle t * omega (< 1000 rad, where
    # a float32 ulp is 6.1e-5) once more or less would move cos and sin by as much: 1e-4 allowed
    ref = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 64), ref, atol=1e-4, rtol=0)


def _attention_ref(att, x, context=None):
    "Attention written out: explicit scores, softmax and weighted sum, one head at a time."
    B, C, H, W = x.shape
    d = C // att.heads
    h = att.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    q, (k, v) = att.q(h), att.kv(h if context is None else context).chunk(2, -1)
    outs = [
        torch.softmax(q[..., i * d : (i + 1) * d] @ k[..., i * d : (i + 1) * d].transpose(1, 2) / math.sqrt(d), -1)
        @ v[..., i * d : (i + 1) * d]
        for i in range(att.heads)
    ]
    return x + att.out(torch.cat(outs, -1)).transpose(1, 2).reshape(B, C, H, W)


def test_attention_matches_explicit_softmax():
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 6)
    cross, self_ = Attention(16, heads=2, context_dim=6), Attention(16, heads=4)
    # outputs x + attention are < ~5, where a float32 ulp is 4.8e-7; the fused and the explicit softmax (over <= 16 keys
    # of 4- or 8-term products) round differently by a few ulps: 1e-5 allowed (~20 ulp)
    torch.testing.assert_close(cross(x, ctx), _attention_ref(cross, x, ctx), atol=1e-5, rtol=0)
    torch.testing.assert_close(self_(x), _attention_ref(self_, x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='channels=30 must be divisible by heads=4'):
        Attention(30, heads=4)


def test_resblock_uses_the_embedding():
    rb = ResBlock(8, 16, 32)
    x = torch.randn(2, 8, 4, 4)
    assert rb(x, torch.randn(2, 32)).shape == (2, 16, 4, 4)
    assert not torch.allclose(rb(x, torch.zeros(2, 32)), rb(x, torch.ones(2, 32)))


@pytest.mark.parametrize(
    'kw',
    [
        dict(),
        dict(channels=(32, 64, 64, 64), attn=(False, True, False, True), layers=2, groups=16, head_dim=16, in_ch=3),
    ],
)
def test_same_function_as_diffusers_unet2dmodel(kw):
    d = diffusers_unet(**kw)
    torch.manual_seed(0)
    for p in d.parameters():
        nn.init.normal_(p, std=0.1)
    ours = from_diffusers(d)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in d.parameters())
    c = kw.get('in_ch', 1)
    x, t = torch.randn(3, c, 16, 16), torch.tensor([0, 400, 999])
    with torch.no_grad():
        a, b = ours(x, t), d(x, t).sample
    # the same float32 kernels but in attention (our one k|v matmul, their two): a few ulps (~1e-7 relative) there,
    # carried through ~30 normalised layers: ~1e-6 of the output's size; 1e-4 of it allowed
    torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max().item(), rtol=0)


def test_from_diffusers_rejects_what_it_cannot_map():
    from diffusers import UNet2DModel

    d = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=('DownBlock2D', 'SkipDownBlock2D'),
        up_block_types=('SkipUpBlock2D', 'UpBlock2D'),
        norm_num_groups=8,
    )
    with pytest.raises(ValueError, match="from_diffusers supports down blocks"):
        from_diffusers(d)


def test_save_and_load_pretrained_round_trip(tmp_path):
    m = UNet(channels=(8, 16), attn=(False, True), num_classes=3, context_dim=4)
    p = save_pretrained(m, tmp_path / 'u.safetensors', prediction_type='v_prediction', T=500)
    m2, info = load_pretrained(p)
    assert info['prediction_type'] == 'v_prediction' and info['T'] == 500 and info['config']['num_classes'] == 3
    x, ctx = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 4)
    y = torch.tensor([0, 2])
    assert torch.equal(m(x, 3, class_labels=y, context=ctx), m2(x, 3, class_labels=y, context=ctx))  # same weights


def test_shipped_digits_unet_is_a_unet_for_16x16_digits():
    m, info = load_pretrained('digits_unet')
    assert isinstance(m, UNet) and info['config']['in_channels'] == 1
    with torch.no_grad():
        assert m(torch.randn(2, 1, 16, 16), torch.tensor([10, 900])).shape == (2, 1, 16, 16)


def test_brief_training_on_digits_lowers_the_loss():
    torch.manual_seed(0)
    sched = Schedule.from_name('linear', T=1000)
    dl = get_dataloader('digits', batch_size=32, generator=seed_everything(0))
    st = train(
        UNet(channels=(8, 16), attn=(False, True)),
        lambda m, b: ddpm_loss(m, b[0], sched),
        dl,
        25,
        3e-3,
        warmup=2,
        progress=False,
    )
    assert sum(st.losses[-5:]) < sum(st.losses[:5])


@pytest.mark.parametrize(
    'kw,match',
    [
        (dict(in_channels=0), r'UNet: in_channels must be an integer >= 1, got 0'),
        (dict(out_channels=1.0), r'UNet: out_channels must be an integer >= 1, got 1.0 of type float'),
        (dict(channels=()), r'UNet: channels must be a tuple of widths, one per level, got \(\)'),
        (dict(channels='abc'), r"UNet: channels must be a tuple of widths, one per level, got 'abc'"),
        (dict(channels=(16, -32)), r'UNet: every width in channels must be an integer >= 1, got -32'),
        (dict(channels=(16, 32), attn=(1, 0)), r'attn \(1, 0\) needs one flag per level of .*, each True or False'),
        (dict(layers=0), r'UNet: layers must be an integer >= 1, got 0'),
        (dict(groups=0), r'UNet: groups must be an integer >= 1, got 0'),
        (dict(channels=(24, 48), heads=5), r'every width with attention must be a multiple of heads=5; \[48\] are not'),
        (dict(dropout=-0.1), r'UNet: dropout must be a finite number >= 0 and < 1, got -0.1'),
        (dict(num_classes=0), r'UNet: num_classes \(None: no conditioning\) must be an integer >= 1, got 0'),
        (dict(context_dim=2.5), r'UNet: context_dim \(None: no conditioning\) must be an integer >= 1, got 2.5'),
    ],
)
def test_bad_config_gets_a_clear_error(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        UNet(**kw)


def test_bad_x_t_labels_and_context_get_clear_errors():
    m = UNet(channels=(16, 32), attn=(False, True), num_classes=3, context_dim=8)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match=r'wants x of dtype torch.float32 \(that of its weights\), got torch.float64'):
        m(x.double(), 0)
    with pytest.raises(TypeError, match=r'UNet wants x as a floating-point tensor \(B, ...\), got a torch.int64'):
        m((x * 127).long(), 0)
    with pytest.raises(TypeError, match=r'got a torch.uint8 tensor'):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 0)
    with pytest.raises(TypeError, match=r'got ndarray'):
        m(x.numpy(), 0)
    with pytest.raises(ValueError, match=r'UNet wants x of shape \(B, 1, H, W\), got \(2, 2, 8, 8\)'):
        m(torch.randn(2, 2, 8, 8), 0)
    with pytest.raises(ValueError, match=r'multiples of 2, got H=8, W=7'):
        m(torch.randn(2, 1, 8, 7), 0)
    with pytest.raises(ValueError, match=r'a \(B,\) tensor of times with B = 2, got a torch.int64 of shape \(3,\)'):
        m(x, torch.arange(3))
    with pytest.raises(ValueError, match=r'got a torch.float32 of shape \(2, 1\)'):
        m(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r'got a torch.bool'):
        m(x, torch.tensor([True, False]))
    with pytest.raises(TypeError, match=r'wants t as a number or a tensor, got str'):
        m(x, 'noise')
    with pytest.raises(TypeError, match=r'class_labels must be integers, got torch.float32'):
        m(x, 0, class_labels=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r'one per sample, \(B,\) with B = 2, got shape \(3,\)'):
        m(x, 0, class_labels=torch.arange(3))
    with pytest.raises(ValueError, match=r'context of shape \(B, L, 8\) with B = 2 .* of shape \(3, 5, 8\)'):
        m(x, 0, context=torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match=r'and the dtype of x \(torch.float32\), got torch.float64'):
        m(x, 0, context=torch.randn(2, 5, 8).double())
    with pytest.raises(ValueError, match=r'got list'):
        m(x, 0, context=[[0.0] * 8])
    assert m(x, torch.tensor([3]), class_labels=2, context=torch.randn(2, 5, 8)).shape == (2, 1, 8, 8)  # one t, label


def test_the_registry_rebuilds_a_unet_from_its_file_only(tmp_path):
    from diffcourse.core import ARCHITECTURES

    assert ARCHITECTURES['diffcourse.unet.UNet'] is UNet
    p = save_pretrained(UNet(channels=(8, 16), attn=(False, True)), tmp_path / 'u.safetensors')
    from diffcourse.core import load_safetensors

    assert json.loads(load_safetensors(p)[1]['models'])['']['arch'] == 'diffcourse.unet.UNet'
