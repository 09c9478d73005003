"""Lesson 09: the hand-written Stable Diffusion loop against diffusers' pipelines,
on tiny random parts saved and reloaded."""

import json, tempfile, warnings
from pathlib import Path

import pytest
import torch

from diffcourse.latent import (
    SDParts,
    glyph_vae,
    glyph_unet,
    glyph_scheduler,
    save_parts,
    load_parts,
    to_pipeline,
    text_to_image,
    image_to_image,
    encode_images,
    decode_latents,
    prompt_lists,
    denoise,
    load_glyph_vae,
    load_glyph_sd,
    GLYPH_VAE,
    GLYPH_SD,
)
from diffcourse.core import weights_path
from diffcourse.clip import make_glyph_tokenizer, tiny_clip_config
from diffcourse.core import load_safetensors, save_safetensors
from test_data import silent_server, no_network, online  # noqa: F401 (fixtures, written once)

# Tolerance of the comparisons with diffusers' pipelines: both sides run the same modules and the same float32
# operations in the same order (CFG, scheduler step, decode); only the final [-1, 1] -> [0, 1] map is done in another
# order, one rounding of values <= 1 (6e-8). 1e-5 allowed leaves room for a few dozen roundings.
PIPELINE_ATOL = 1e-5

warnings.filterwarnings('ignore', message='.*safety checker.*')


@pytest.fixture(scope='module')
def parts(tmp_path_factory):
    "Tiny random parts written with save_pretrained to a temporary folder and loaded back with from_pretrained."
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tok = make_glyph_tokenizer()
    te = CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config)
    p = SDParts(
        tok,
        te,
        glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8),
        glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8),
        glyph_scheduler(),
    )
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


@pytest.mark.parametrize(
    'scheduler', ['DDIMScheduler', 'EulerAncestralDiscreteScheduler', 'DPMSolverMultistepScheduler']
)
def test_text_to_image_matches_pipeline(parts, scheduler):
    import diffusers

    parts.scheduler = getattr(diffusers, scheduler).from_config(glyph_scheduler().config)
    pipe = to_pipeline(parts)
    kw = dict(num_inference_steps=4, guidance_scale=4.0, eta=1.0)
    ref = pipe(
        PROMPTS, negative_prompt=NEGATIVES, generator=torch.Generator().manual_seed(0), output_type='pt', **kw
    ).images
    ours = text_to_image(
        parts, PROMPTS, NEGATIVES, steps=4, guidance_scale=4.0, eta=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert ours.shape == ref.shape == (2, 1, 16, 16)
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=PIPELINE_ATOL, rtol=0)


def test_no_guidance_matches_pipeline(parts):
    parts.scheduler = glyph_scheduler()
    ref = to_pipeline(parts)(
        'a digit 7',
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(1),
        output_type='pt',
    ).images
    ours = text_to_image(parts, 'a digit 7', steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=PIPELINE_ATOL, rtol=0)


def test_image_to_image_matches_pipeline(parts):
    from diffusers import StableDiffusionImg2ImgPipeline

    parts.scheduler = glyph_scheduler()
    i2i = StableDiffusionImg2ImgPipeline(**to_pipeline(parts).components)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = i2i(
        PROMPTS,
        image=image / 2 + 0.5,
        negative_prompt=NEGATIVES,
        strength=0.5,
        num_inference_steps=6,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(3),
        output_type='pt',
    ).images
    ours = image_to_image(
        parts,
        image,
        PROMPTS,
        NEGATIVES,
        strength=0.5,
        steps=6,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=PIPELINE_ATOL, rtol=0)


def test_strength_zero_returns_the_reconstruction(parts):
    image = torch.rand(1, 1, 16, 16) * 2 - 1
    out = image_to_image(parts, image, 'a capital A', strength=0.0, steps=5, generator=torch.Generator().manual_seed(0))
    z = encode_images(parts.vae, image, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, decode_latents(parts.vae, z), rtol=0, atol=0)  # the very same calls: bitwise


def test_bad_input(parts):
    with pytest.raises(ValueError, match='negative_prompt has 3 entries but prompt has 2'):
        prompt_lists(PROMPTS, ['', '', ''])
    with pytest.raises(ValueError, match='negative_prompt has 1 entries but prompt has 2'):
        text_to_image(parts, PROMPTS, ['x'], steps=1)
    for bad in (2, -0.1, float('nan'), '0.5'):
        with pytest.raises(
            (TypeError, ValueError),
            match=r'strength \(0 keeps the image, 1 starts from noise\) must be a finite number',
        ):
            image_to_image(parts, torch.zeros(1, 1, 16, 16), 'a capital A', strength=bad, steps=2)
    for bad in (float('nan'), -3.0, float('inf')):  # lesson 08's check: not a silent "no guidance"
        with pytest.raises(ValueError, match='guidance scale must be a finite number >= 0'):
            text_to_image(parts, 'a capital A', steps=2, guidance_scale=bad)
        with pytest.raises(ValueError, match='guidance scale must be a finite number >= 0'):
            image_to_image(parts, torch.zeros(1, 1, 16, 16), 'a capital A', steps=2, guidance_scale=bad)
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError, match=f'steps must be an integer >= 1 and <= 1000, got {bad}'):
            text_to_image(parts, 'a capital A', steps=bad)
    with pytest.raises(TypeError, match='steps must be an integer'):
        text_to_image(parts, 'a capital A', steps=2.5)
    with pytest.raises(ValueError, match='eta must be a finite number >= 0 and <= 1, got -1'):
        text_to_image(parts, 'a capital A', steps=2, eta=-1)
    with pytest.raises(TypeError, match='generator must be a torch.Generator or None, got int'):
        text_to_image(parts, 'a capital A', steps=2, generator=0)
    with pytest.raises(TypeError, match='prompt must be a string or a list of strings, got NoneType'):
        text_to_image(parts, None, steps=2)
    with pytest.raises(TypeError, match='negative_prompt must be a string or a list of strings, got int'):
        prompt_lists('a capital A', 3)
    with pytest.raises(ValueError, match='height must be an integer >= 4, got 0'):
        text_to_image(parts, 'a capital A', steps=2, height=0)
    with pytest.raises(ValueError, match=r'latents must be a float tensor of shape \(1, 4, 4, 4\)'):
        text_to_image(parts, 'a capital A', steps=2, latents=torch.zeros(1, 4, 4, 4, dtype=torch.long))
    z, cond = torch.zeros(2, 4, 4, 4), torch.zeros(3, 16, 32)
    with pytest.raises(ValueError, match=r'cond must be \(B, L, D\) hidden states for the B = 2 latents'):
        denoise(parts.unet, parts.scheduler, z, parts.scheduler.timesteps, cond)
    with pytest.raises(ValueError, match=r'uncond must have the shape of cond, \(2, 16, 32\)'):
        denoise(parts.unet, parts.scheduler, z, parts.scheduler.timesteps, cond[:2], cond)
    with pytest.raises(TypeError, match='dtype must be a floating torch.dtype'):
        load_parts('x/y', dtype=torch.int8)
    with pytest.raises(TypeError, match='scheduler must be a diffusers scheduler class'):
        load_parts('x/y', scheduler=dict)
    from diffcourse.latent import vae_loss_fn, latent_loss_fn, fit_scaling_factor, latent_dataset

    with pytest.raises(ValueError, match='kl_weight must be a finite number >= 0, got -1'):
        vae_loss_fn(-1)
    with pytest.raises(ValueError, match='p_uncond must be a finite number >= 0 and <= 1'):
        latent_loss_fn(parts.tokenizer, parts.text_encoder, ['a capital A'], None, p_uncond=2)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'):
        latent_dataset(parts.vae, z, batch_size=0)
    with pytest.raises(ValueError, match=r'images must be \(N, c, H, W\) with N >= 2'):
        fit_scaling_factor(parts.vae, z[:1])
    with pytest.raises(ValueError, match=r'decodes latents of shape \(B, 4, h, w\), got \(1, 1, 4, 4\)'):
        decode_latents(parts.vae, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match='multiples of 4'):
        encode_images(parts.vae, torch.zeros(1, 1, 10, 16))
    with pytest.raises(
        OSError, match=r'point load_parts at a local folder.*hf download nobody-here/not-a-model --local-dir DIR'
    ):
        load_parts('nobody-here/not-a-model', local_files_only=True)
    with pytest.raises(ValueError, match='got the file'):
        load_parts(__file__)


def test_vae_kl_matches_diffusers(parts):
    from diffcourse.latent import vae_kl

    with torch.no_grad():
        post = parts.vae.encode(torch.rand(3, 1, 16, 16) * 2 - 1).latent_dist
    # the same float32 formula summed over 64 latent numbers of size < 10: 64 * 10 * 6e-8 = 4e-5 at worst; 1e-3 allowed
    torch.testing.assert_close(vae_kl(post.mean, post.logvar), post.kl(), atol=1e-3, rtol=0)


def test_brief_training_lowers_the_losses():
    "A few steps of the VAE loss and of the latent U-Net loss, with the course's loop, on glyphs."
    from transformers import CLIPTextModel
    from diffcourse.data import load_glyphs
    from diffcourse.schedules import Schedule
    from diffcourse.training import train
    from diffcourse.latent import vae_loss_fn, fit_scaling_factor, latent_dataset, latent_loss_fn

    torch.manual_seed(0)
    g = load_glyphs('train')
    x, caps = g.images[::8], g.captions[::8]  # 396 glyphs
    dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x),
        batch_size=16,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    vae = glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8)
    st = train(vae, vae_loss_fn(), dl, 25, lr=2e-3, warmup=2, ema_decay=0.0, progress=False)
    assert sum(st.losses[-5:]) < 0.8 * sum(st.losses[:5])
    scale = fit_scaling_factor(vae, x)
    assert vae.config.scaling_factor == scale
    ds = latent_dataset(vae, x)
    mu, sigma, _ = ds.tensors
    z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))  # posterior samples, scaled
    # about unit variance: fit_scaling_factor drew these very samples (seed 0), so the std is 1 up to float32 rounding
    # of a mean over 25,344 numbers (1e-5) and the fp order; 0.1 allowed, the claim being "about 1", not an identity
    torch.testing.assert_close(z.std(), torch.tensor(1.0), atol=0.1, rtol=0)
    tok = make_glyph_tokenizer()
    te = (
        CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config)
        .eval()
        .requires_grad_(False)
    )
    unet = glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    st = train(
        unet,
        latent_loss_fn(tok, te, caps, Schedule.from_name('scaled_linear', 1000)),
        dl,
        30,
        lr=2e-3,
        warmup=2,
        ema_decay=0.0,
        progress=False,
    )
    assert sum(st.losses[-5:]) < sum(st.losses[:5])


def test_shipped_glyph_sd_exports_to_stable_diffusion_pipeline(tmp_path):
    "The shipped glyph model saves with save_pretrained and runs in diffusers' pipeline, giving our loop's images."
    from diffusers import StableDiffusionPipeline
    from diffcourse.latent import load_glyph_sd

    sd = load_glyph_sd()
    pipe = StableDiffusionPipeline.from_pretrained(
        save_parts(sd, tmp_path), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = ['a bold capital A', 'a serif digit 7']
    ref = pipe(
        prompts, num_inference_steps=5, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), output_type='pt'
    ).images
    ours = text_to_image(sd, prompts, steps=5, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours / 2 + 0.5, ref, atol=10 * PIPELINE_ATOL, rtol=0)  # as above, for the trained parts
    assert pipe('a capital B', num_inference_steps=2).images[0].mode == 'L'  # one-channel images come out grayscale


def test_load_parts_in_half_precision(parts, tmp_path):
    "The path a GPU takes with a real checkpoint (dtype=torch.float16), here on the CPU with the tiny parts."
    parts.scheduler = glyph_scheduler()
    half = load_parts(save_parts(parts, tmp_path), dtype=torch.float16, local_files_only=True)
    assert {half.text_encoder.dtype, half.unet.dtype, half.vae.dtype} == {torch.float16}
    out = text_to_image(
        half, 'a capital A', 'a capital B', steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert out.dtype == torch.float16 and out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


# ---- the shipped files' loaders build fixed classes, after checking the file; nothing is written ----


pytestmark = pytest.mark.usefixtures('private_tempdir')  # what a call leaves is its own


def _glyph_temp_folders() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob('glyph_*')}


def _craft(tmp_path, name, config_key=None, change=None, tensors=None, **meta_changes):
    """A copy of a shipped file with one config changed (`config_key`: which metadata entry),
    or other metadata or tensors."""
    t, meta = load_safetensors(weights_path(name))
    meta = dict(meta)
    if config_key is not None:  # the config of one model: '' (a file of one), 'unet' or 'text_encoder'
        models = json.loads(meta['models'])
        models[config_key]['config'] = {**models[config_key]['config'], **change}
        meta['models'] = json.dumps(models)
    tok = {k: json.loads(meta_changes.pop(k)) for k in ('vocab', 'merges', 'model_max_length') if k in meta_changes}
    if tok:
        meta['tokenizer'] = json.dumps({**json.loads(meta['tokenizer']), **tok})
    path = tmp_path / 'crafted.safetensors'
    save_safetensors(t if tensors is None else tensors(t), path, metadata={**meta, **meta_changes})
    return path


@pytest.mark.parametrize(
    'how, error',
    [
        (dict(format='diffcourse.clip/1'), 'is not a diffcourse weights file'),
        (dict(models='not json'), "its metadata 'models' must be a JSON object, got text that is not JSON"),
        (
            dict(config_key='', change={'_class_name': 'StableDiffusionPipeline'}),
            "unknown keys ['_class_name']",
        ),
        (
            dict(config_key='', change={'layers_per_block': 10**6}),
            'layers_per_block = 1000000 in its AutoencoderKL config',
        ),
        (
            dict(config_key='', change={'latent_channels': 8}),
            'does not fit the model diffusers.AutoencoderKL',
        ),
        (dict(config_key='', change={'block_out_channels': 'wide'}), 'does not build a diffusers.AutoencoderKL'),
        (dict(tensors=lambda t: {**t, 'decoder.extra': torch.zeros(2)}), "unexpected keys (1): ['decoder.extra']"),
    ],
)
def test_crafted_vae_files_are_refused(tmp_path, how, error):
    before = _glyph_temp_folders()
    with pytest.raises(ValueError) as e:
        load_glyph_vae(_craft(tmp_path, GLYPH_VAE, **how))
    assert error in str(e.value) and 'crafted.safetensors' in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['crafted.safetensors'] and _glyph_temp_folders() == before


@pytest.mark.parametrize(
    'how, error',
    [
        (dict(format='diffcourse.sd-vae/1'), 'is not a diffcourse weights file'),
        (
            dict(config_key='unet', change={'_class_name': 'FluxTransformer2DModel'}),
            "does not fit UNet2DConditionModel(",
        ),
        (
            dict(config_key='text_encoder', change={'model_type': 'bert'}),
            "has model_type 'bert', not 'clip_text_model'",
        ),
        (
            dict(config_key='text_encoder', change={'auto_map': {'AutoModel': 'x.Y'}}),
            "unknown keys ['auto_map']",
        ),
        (dict(config_key='unet', change={'cross_attention_dim': 32}), 'does not fit the model diffusers.UNet2DCondi'),
        (
            dict(tensors=lambda t: {**t, 'evil.weight': torch.zeros(1)}),
            "tensors ['evil.weight'] belong to none of its models ['text_encoder', 'unet']",
        ),
        (dict(vocab='{"a": 0, "b": 0}'), 'its vocab must give 2 non-empty tokens the ids 0..1'),
        (dict(model_max_length='2'), 'model_max_length 2 must lie in [3, 16]'),
    ],
)
def test_crafted_sd_files_are_refused(tmp_path, how, error):
    before = _glyph_temp_folders()
    with pytest.raises(ValueError) as e:
        load_glyph_sd(_craft(tmp_path, GLYPH_SD, **how))
    assert error in str(e.value) and 'crafted.safetensors' in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['crafted.safetensors'] and _glyph_temp_folders() == before


def test_glyph_loaders_leave_no_temporary_folders():
    before = _glyph_temp_folders()
    sd = load_glyph_sd()
    load_glyph_vae()
    make_glyph_tokenizer()
    assert _glyph_temp_folders() == before
    assert sd.tokenizer.tokenize('a bold capital A') == ['a</w>', 'bold</w>', 'capital</w>', 'a</w>']  # in memory


# ---- offline and slow networks ----

HOLDING = 'point load_parts at a local folder holding model_index.json'


def test_load_parts_offline_makes_no_connection(monkeypatch, no_network):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(OSError, match=HOLDING) as e:
        load_parts('nobody-here/not-a-model')
    assert 'HF_HUB_OFFLINE=1' in str(e.value) and no_network == []


def test_load_parts_when_the_hub_never_answers(monkeypatch, online):
    from huggingface_hub import constants

    with silent_server() as (url, accepted):
        monkeypatch.setattr(constants, 'ENDPOINT', url.rstrip('/'))
        with pytest.raises(OSError, match='did not answer within 0.2 s') as e:
            load_parts('nobody-here/not-a-model')
    assert len(accepted) == 1 and HOLDING in str(e.value)


def test_load_parts_reports_a_broken_folder_as_such(tmp_path, parts):
    folder = save_parts(parts, tmp_path / 'sd')
    cfg = json.loads((folder / 'scheduler' / 'scheduler_config.json').read_text())
    (folder / 'scheduler' / 'scheduler_config.json').write_text(
        json.dumps({**cfg, '_class_name': 'StableDiffusionPipeline'})
    )
    with pytest.raises(
        OSError, match="names the class 'StableDiffusionPipeline', which is not one of diffusers' schedulers"
    ):
        load_parts(folder)
