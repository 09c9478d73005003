"""Lesson 09d: DDIM inversion against diffusers' DDIMInverseScheduler and against exact retracing, inpainting
against diffusers' StableDiffusionInpaintPipeline, and the entry points' error messages."""

import functools, warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionInpaintPipeline
from diffusers.image_processor import VaeImageProcessor

from conftest import expect_clear_error
from diffcourse.core import randn
from diffcourse.data import load_glyphs
from diffcourse.editing import InverseDDIM, ddim_invert, edit, inpaint, latent_mask, rms, swap_char
from diffcourse.guidance import cfg_combine
from diffcourse.latent import (
    SDParts,
    encode_images,
    encode_prompt,
    glyph_scheduler,
    load_glyph_sd,
    text_to_image,
    to_pipeline,
)

warnings.filterwarnings('ignore', message='.*safety checker.*')

# float32's relative spacing: one rounding moves a number by at most half of this.
F32 = torch.finfo(torch.float32).eps  # 2**-23 = 1.2e-7


@functools.cache
def _sd():
    "The shipped glyph Stable Diffusion, loaded once per test module (its parts are frozen, nothing changes them)."
    return load_glyph_sd()


@functools.cache
def _glyphs(n=6):
    test = load_glyphs('test')
    pick = torch.linspace(0, len(test.images) - 1, n).long()
    return test.images[pick], [test.captions[i] for i in pick.tolist()]


@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
@pytest.mark.parametrize('steps', [1, 3, 7, 10, 50, 333])
def test_inverse_grid_is_diffusers_and_the_samplers(spacing, steps):
    "Our upward grid is DDIMInverseScheduler's, and both are the sampler's grid reversed, for divisors of 1000 or not."
    sampler = glyph_scheduler(timestep_spacing=spacing)
    theirs = DDIMInverseScheduler.from_config(sampler.config)
    theirs.set_timesteps(steps)
    ours = InverseDDIM(sampler, steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    assert ours.timesteps.tolist() == sampler.timesteps.flip(0).tolist()
    # the rung below each t is where DDIMInverseScheduler.step starts: t - T // steps, or abar = 1 below the grid
    for t in theirs.timesteps.tolist():
        below = t - sampler.config.num_train_timesteps // steps
        want = sampler.alphas_cumprod[below] if below >= 0 else theirs.initial_alpha_cumprod
        assert ours.abar_below[t].item() == want.item()


@pytest.mark.parametrize('steps, scale', [(10, 1.0), (25, 1.0), (25, 3.0), (7, 5.0)])
def test_ddim_invert_matches_ddim_inverse_scheduler(steps, scale):
    sd = _sd()
    x, caps = _glyphs()
    z0 = encode_images(sd.vae, x)
    cond = encode_prompt(sd.tokenizer, sd.text_encoder, caps)
    uncond = encode_prompt(sd.tokenizer, sd.text_encoder, [''] * len(caps))
    inv = DDIMInverseScheduler.from_config(sd.scheduler.config)
    inv.set_timesteps(steps)
    z = z0
    with torch.no_grad():
        for t in inv.timesteps:
            if scale == 1:
                eps = sd.unet(z, t, encoder_hidden_states=cond).sample
            else:
                eps = cfg_combine(
                    *sd.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2),
                    scale,
                )
            z = inv.step(eps, t, z).prev_sample
    ours = ddim_invert(sd, x, caps, steps=steps, guidance_scale=scale)
    # The same U-Net calls; the step differs only in writing sqrt(1 - abar) as a sqrt where diffusers writes
    # (1 - abar) ** 0.5 (at most one rounding apart). A few roundings per step of numbers of size |z| <= 4, over
    # `steps` steps through a U-Net that does not amplify much: 8 roundings x steps x F32 x (1 + |z|), with room.
    tol = 8 * steps * F32 * (1 + z.abs().max().item())
    assert (ours - z).abs().max().item() <= tol


class EpsOfT(nn.Module):
    "A stand-in U-Net whose noise prediction depends on the timestep only, so eq. (3) of the lesson is exact."

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 64).reshape(1, 4, 4, 4))
        self.config = SimpleNamespace(in_channels=4, sample_size=4)

    def forward(self, z, t, encoder_hidden_states=None):
        return SimpleNamespace(sample=torch.sin(self.w * (1 + torch.as_tensor(t) / 100)).expand_as(z))


@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
@pytest.mark.parametrize('steps', [1, 3, 4, 7, 10, 50])
def test_sampling_retraces_the_inversion_when_eps_does_not_depend_on_z(steps, spacing):
    "With eps a function of t alone, inverting then sampling on the same grid is the identity: a misaligned grid fails."
    sd = _sd()
    parts = SDParts(sd.tokenizer, sd.text_encoder, EpsOfT(), sd.vae, glyph_scheduler(timestep_spacing=spacing))
    z0 = randn((3, 4, 4, 4), torch.Generator().manual_seed(0))
    prompts = ['a capital A', 'a digit 7', 'a lowercase g']
    zT = ddim_invert(parts, z0, prompts, steps=steps)
    back = text_to_image(parts, prompts, steps=steps, guidance_scale=1.0, latents=zT, decode=False)
    # 2 x steps steps of about 4 roundings each, of numbers of size <= 4 + |z_0|. Eq. (1)'s division by sqrt(abar)
    # magnifies a rounding going up, and eq. (2)'s multiplication by sqrt(abar) on the way down undoes it.
    tol = 2 * steps * 4 * F32 * (4 + z0.abs().max().item())
    assert (back - z0).abs().max().item() <= tol
    if steps > 1:  # a control: sampling on another grid (one step more) does not retrace it
        wrong = text_to_image(parts, prompts, steps=steps + 1, guidance_scale=1.0, latents=zT, decode=False)
        assert (wrong - z0).abs().max().item() > 100 * tol


@pytest.mark.parametrize('spacing', ['leading', 'trailing'])
def test_edit_with_the_same_prompt_is_a_reconstruction(spacing):
    sd = _sd()
    parts = SDParts(sd.tokenizer, sd.text_encoder, sd.unet, sd.vae, glyph_scheduler(timestep_spacing=spacing))
    x, caps = _glyphs()
    z0 = encode_images(sd.vae, x)
    err = {k: rms(edit(parts, x, caps, caps, steps=k, decode=False), z0).mean().item() for k in (5, 50)}
    assert err[50] < err[5]  # eq. (3)'s error shrinks with the step; 10x more steps: clearly smaller


def inpaint_pipe(sd):
    pipe = StableDiffusionInpaintPipeline(**to_pipeline(sd).components, requires_safety_checker=False)  # same parts
    pipe.set_progress_bar_config(disable=True)
    return pipe


def masks(n):
    right = torch.zeros(1, 1, 16, 16)
    right[..., 8:] = 1
    soft = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(3))  # in [0, 1]: binarized at 0.5
    return {'right half, one for all': right, 'soft, one each': soft}


@pytest.mark.parametrize('scale', [1.0, 4.0])
@pytest.mark.parametrize('which', ['right half, one for all', 'soft, one each'])
@pytest.mark.parametrize('output', ['latent', 'pt'])
def test_inpaint_matches_the_pipeline(scale, which, output):
    sd = _sd()
    x, caps = _glyphs(4)
    mask = masks(len(x))[which]
    kw = dict(num_inference_steps=12, guidance_scale=scale, strength=1.0, output_type=output)
    ref = inpaint_pipe(sd)(caps, image=x / 2 + 0.5, mask_image=mask, generator=torch.Generator().manual_seed(0), **kw)
    ours = inpaint(
        sd,
        x,
        mask,
        caps,
        steps=12,
        guidance_scale=scale,
        generator=torch.Generator().manual_seed(0),
        decode=output == 'pt',
    )
    ours = ours if output == 'latent' else ours / 2 + 0.5  # the pipeline's 'pt' images are in [0, 1]
    # The same modules and float32 operations in the same order (the pipeline's [0, 1] -> [-1, 1] map of the image is
    # the only extra rounding, of values <= 1). Latents of size <= 6, 12 steps: 1e-5 is a few dozen roundings.
    assert (ours - ref.images).abs().max().item() <= 1e-5


def test_inpaint_mask_ends_are_the_image_and_plain_sampling():
    "m = 0 everywhere gives the image's posterior sample; m = 1 gives text_to_image from the same noise, exactly."
    sd = _sd()
    x, caps = _glyphs(3)
    g = torch.Generator().manual_seed(5)
    known = encode_images(sd.vae, x, g)  # inpaint's draws, in its order: the posterior sample, then the noise
    noise = randn(known.shape, g)
    zero, one = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    kept = inpaint(
        sd, x, zero, caps, steps=6, guidance_scale=2.0, generator=torch.Generator().manual_seed(5), decode=False
    )
    assert torch.equal(kept, known)  # (1 - 0) * known + 0 * z: exact
    free = inpaint(
        sd, x, one, caps, steps=6, guidance_scale=2.0, generator=torch.Generator().manual_seed(5), decode=False
    )
    plain = text_to_image(sd, caps, steps=6, guidance_scale=2.0, latents=noise, decode=False)
    # 0 * known + 1 * z has z's values exactly, but the memory layout of `known` (a strided view into the VAE's
    # moments): the U-Net's convolutions then add in another order, about one rounding per step of numbers <= 1 + |z|.
    tol = 8 * 6 * F32 * (1 + plain.abs().max().item())
    assert (free - plain).abs().max().item() <= tol


def test_latent_mask_is_diffusers():
    "Binarize at 0.5, resize to latent size (nearest): the pipeline's mask processor and prepare_mask_latents."
    x = torch.zeros(4, 1, 16, 16)
    m = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    proc = VaeImageProcessor(vae_scale_factor=4, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    want = F.interpolate(proc.preprocess(m.clone(), height=16, width=16), size=(4, 4))
    assert torch.equal(latent_mask(m, x, 4), want)


def test_swap_char_and_rms():
    assert swap_char('an italic sans capital A', 'g') == 'an italic sans lowercase g'
    assert swap_char('a capital A', 'e') == 'a lowercase e'
    assert torch.allclose(rms(torch.zeros(2, 4), torch.ones(2, 4)), torch.ones(2))


def _x():
    return _glyphs()[0]


def _caps():
    return _glyphs()[1]


def _right():
    return masks(1)['right half, one for all']


BAD = [
    (
        lambda: ddim_invert(_sd(), _x(), _caps(), eta=0.5),
        ValueError,
        'DDIM inversion is deterministic: eta must be 0, got 0.5',
    ),
    (lambda: ddim_invert(_sd(), _x(), _caps()[:2]), ValueError, 'got 6 images for 2 prompts'),
    (
        lambda: ddim_invert(_sd(), _x(), _caps(), steps=0),
        ValueError,
        'steps must be an integer >= 1 and <= 1000, got 0',
    ),
    (lambda: ddim_invert(_sd(), _x(), _caps(), steps=1001), ValueError, 'got 1001'),
    (lambda: ddim_invert(_sd(), _x(), _caps(), steps=2.5), TypeError, 'steps must be an integer'),
    (
        lambda: ddim_invert(_sd(), torch.zeros(6, 3, 16, 16), _caps()),
        ValueError,
        'source must be images (B, 1, H, W) or latents (B, 4, 4, 4)',
    ),
    (lambda: ddim_invert(_sd(), _x()[..., :10], _caps()), ValueError, 'multiples of 4'),
    (lambda: edit(_sd(), _x(), _caps(), _caps()[:1]), ValueError, 'got 6 images for 1 prompts'),
    (
        lambda: inpaint(_sd(), _x(), _right()[..., :8], _caps()),
        ValueError,
        'mask must be (1, 1, 16, 16) or (6, 1, 16, 16)',
    ),
    (
        lambda: inpaint(_sd(), _x(), torch.zeros(2, 1, 16, 16), _caps()),
        ValueError,
        'mask must be (1, 1, 16, 16) or (6, 1, 16, 16)',
    ),
    (
        lambda: inpaint(_sd(), _x(), _right() * 2 - 1, _caps()),
        ValueError,
        'mask values must lie in [0, 1] (1: new content), got values in [-1, 1]',
    ),
    (lambda: inpaint(_sd(), _x(), _right(), _caps()[:3]), ValueError, 'got 6 images for 3 prompts'),
    (lambda: inpaint(_sd(), _x(), _right(), _caps(), steps=0), ValueError, 'steps must be an integer >= 1'),
    (
        lambda: inpaint(_sd(), _x(), _right(), _caps(), generator=0),
        TypeError,
        'generator must be a torch.Generator or None',
    ),
    (lambda: swap_char('a glyph', 'A'), ValueError, "caption must end with 'capital X'"),
    (lambda: rms(torch.zeros(2, 3), torch.zeros(3, 2)), ValueError, 'rms wants two (B, ...) tensors of one shape'),
]


def test_bad_input_is_named(bad_case):
    expect_clear_error(*bad_case)


def test_inversion_refuses_other_schedulers():
    sd = _sd()
    from diffusers import EulerDiscreteScheduler

    parts = SDParts(
        sd.tokenizer, sd.text_encoder, sd.unet, sd.vae, EulerDiscreteScheduler.from_config(sd.scheduler.config)
    )
    expect_clear_error(
        lambda: ddim_invert(parts, _x(), _caps()),
        TypeError,
        'ddim_invert needs a DDIMScheduler, got EulerDiscreteScheduler',
    )
    assert isinstance(sd.scheduler, DDIMScheduler)
