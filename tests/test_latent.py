"Lesson 09: the hand-written Stable Diffusion loop against diffusers' pipelines, on tiny random parts saved and reloaded."
import warnings

import pytest
import torch

from diffcourse.latent import (SDParts, glyph_vae, glyph_unet, glyph_scheduler, save_parts, load_parts, to_pipeline,
                               text_to_image, image_to_image, encode_images, decode_latents, prompt_lists)
from diffcourse.clip import make_glyph_tokenizer, tiny_clip_config

warnings.filterwarnings('ignore', message='.*safety checker.*')


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
    "Tiny random parts written with save_pretrained to a temporary folder and loaded back with from_pretrained."
    from transformers import CLIPTextModel
    torch.manual_seed(0)
    tok = make_glyph_tokenizer()
    te = CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config)
    p = SDParts(tok, te, glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8), glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8),
                glyph_scheduler())
    p.vae.register_to_config(scaling_factor=0.7)
    folder = save_parts(p, tmp_path_factory.mktemp('tiny_sd'))
    return load_parts(folder, local_files_only=True)


PROMPTS, NEGATIVES = ['a bold capital A', 'a lowercase g'], ['', 'an italic serif lowercase g']


def test_round_trip_keeps_weights(parts, tmp_path):
    again = load_parts(save_parts(parts, tmp_path), local_files_only=True)
    for name in ('text_encoder', 'unet', 'vae'):
        a, b = getattr(parts, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.vae.config.scaling_factor == 0.7


@pytest.mark.parametrize('scheduler', ['DDIMScheduler', 'EulerAncestralDiscreteScheduler', 'DPMSolverMultistepScheduler'])
def test_text_to_image_matches_pipeline(parts, scheduler):
    import diffusers
    parts.scheduler = getattr(diffusers, scheduler).from_config(glyph_scheduler().config)
    pipe = to_pipeline(parts)
    kw = dict(num_inference_steps=4, guidance_scale=4., eta=1.)
    ref = pipe(PROMPTS, negative_prompt=NEGATIVES, generator=torch.Generator().manual_seed(0), output_type='pt', **kw).images
    ours = text_to_image(parts, PROMPTS, NEGATIVES, steps=4, guidance_scale=4., eta=1., generator=torch.Generator().manual_seed(0))
    assert ours.shape == ref.shape == (2, 1, 16, 16)
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=1e-5, rtol=0)


def test_no_guidance_matches_pipeline(parts):
    parts.scheduler = glyph_scheduler()
    ref = to_pipeline(parts)('a digit 7', num_inference_steps=3, guidance_scale=1., generator=torch.Generator().manual_seed(1), output_type='pt').images
    ours = text_to_image(parts, 'a digit 7', steps=3, guidance_scale=1., generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=1e-5, rtol=0)


def test_image_to_image_matches_pipeline(parts):
    from diffusers import StableDiffusionImg2ImgPipeline
    parts.scheduler = glyph_scheduler()
    i2i = StableDiffusionImg2ImgPipeline(**to_pipeline(parts).components)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = i2i(PROMPTS, image=image / 2 + 0.5, negative_prompt=NEGATIVES, strength=0.5, num_inference_steps=6, guidance_scale=3.,
              generator=torch.Generator().manual_seed(3), output_type='pt').images
    ours = image_to_image(parts, image, PROMPTS, NEGATIVES, strength=0.5, steps=6, guidance_scale=3., generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=1e-5, rtol=0)


def test_strength_zero_returns_the_reconstruction(parts):
    image = torch.rand(1, 1, 16, 16) * 2 - 1
    out = image_to_image(parts, image, 'a capital A', strength=0., steps=5, generator=torch.Generator().manual_seed(0))
    z = encode_images(parts.vae, image, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, decode_latents(parts.vae, z))


def test_bad_input(parts):
    with pytest.raises(ValueError, match='negative_prompt has 3 entries but prompt has 2'): prompt_lists(PROMPTS, ['', '', ''])
    with pytest.raises(ValueError, match='negative_prompt has 1 entries but prompt has 2'): text_to_image(parts, PROMPTS, ['x'], steps=1)
    for bad in (2, -0.1, float('nan'), '0.5'):
        with pytest.raises(ValueError, match=r'strength must be a number in \[0, 1\]'):
            image_to_image(parts, torch.zeros(1, 1, 16, 16), 'a capital A', strength=bad, steps=2)
    with pytest.raises(ValueError, match=r'decodes latents of shape \(B, 4, h, w\), got \(1, 1, 4, 4\)'):
        decode_latents(parts.vae, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match='multiples of 4'): encode_images(parts.vae, torch.zeros(1, 1, 10, 16))
    with pytest.raises(OSError, match=r'point load_parts at a local folder.*hf download nobody-here/not-a-model --local-dir DIR'):
        load_parts('nobody-here/not-a-model', local_files_only=True)
    with pytest.raises(ValueError, match='got the file'): load_parts(__file__)


def test_vae_kl_matches_diffusers(parts):
    from diffcourse.latent import vae_kl
    with torch.no_grad(): post = parts.vae.encode(torch.rand(3, 1, 16, 16) * 2 - 1).latent_dist
    torch.testing.assert_close(vae_kl(post.mean, post.logvar), post.kl(), atol=1e-3, rtol=1e-4)


def test_brief_training_lowers_the_losses():
    "A few steps of the VAE loss and of the latent U-Net loss, with the course's loop, on glyphs."
    from transformers import CLIPTextModel
    from diffcourse.data import load_glyphs
    from diffcourse.schedules import Schedule
    from diffcourse.training import train
    from diffcourse.latent import vae_loss_fn, fit_scaling_factor, latent_dataset, latent_loss_fn
    torch.manual_seed(0)
    g = load_glyphs('train')
    x, caps = g.images[::8], g.captions[::8]                                          # 396 glyphs
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16, shuffle=True, drop_last=True,
                                     generator=torch.Generator().manual_seed(0))
    vae = glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8)
    st = train(vae, vae_loss_fn(), dl, 25, lr=2e-3, warmup=2, ema_decay=0., progress=False)
    assert sum(st.losses[-5:]) < 0.8 * sum(st.losses[:5])
    scale = fit_scaling_factor(vae, x)
    assert vae.config.scaling_factor == scale
    ds = latent_dataset(vae, x)
    mu, sigma, _ = ds.tensors
    z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))      # posterior samples, scaled
    torch.testing.assert_close(z.std(), torch.tensor(1.), atol=0.1, rtol=0)                  # have about unit variance
    tok = make_glyph_tokenizer()
    te = CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config).eval().requires_grad_(False)
    unet = glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    st = train(unet, latent_loss_fn(tok, te, caps, Schedule.from_name('scaled_linear', 1000)), dl, 30, lr=2e-3, warmup=2,
               ema_decay=0., progress=False)
    assert sum(st.losses[-5:]) < sum(st.losses[:5])


def test_shipped_glyph_sd_exports_to_stable_diffusion_pipeline(tmp_path):
    "The shipped glyph model saves with save_pretrained and runs in diffusers' pipeline, giving our loop's images."
    from diffusers import StableDiffusionPipeline
    from diffcourse.latent import load_glyph_sd
    sd = load_glyph_sd()
    pipe = StableDiffusionPipeline.from_pretrained(save_parts(sd, tmp_path), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ['a bold capital A', 'a serif digit 7']
    ref = pipe(prompts, num_inference_steps=5, guidance_scale=4., generator=torch.Generator().manual_seed(0), output_type='pt').images
    ours = text_to_image(sd, prompts, steps=5, guidance_scale=4., generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=1e-4, rtol=0)
    assert pipe('a capital B', num_inference_steps=2).images[0].mode == 'L'      # one-channel images come out grayscale


def test_load_parts_in_half_precision(parts, tmp_path):
    "The path a GPU takes with a real checkpoint (dtype=torch.float16), here on the CPU with the tiny parts."
    parts.scheduler = glyph_scheduler()
    half = load_parts(save_parts(parts, tmp_path), dtype=torch.float16, local_files_only=True)
    assert {half.text_encoder.dtype, half.unet.dtype, half.vae.dtype} == {torch.float16}
    out = text_to_image(half, 'a capital A', 'a capital B', steps=2, guidance_scale=3., generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16 and out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()
