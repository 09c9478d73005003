"""Lesson 09c: DreamBooth and LoRA. The adapters compute eq. (2); the shipped adapter loaded into diffusers'
StableDiffusionPipeline with `load_lora_weights` draws what the course's loop draws; files are checked before the
U-Net changes; bad input gets a clear error."""

import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from conftest import expect_clear_error
from diffcourse.artifacts import describe, load
from diffcourse.core import weights_path
from diffcourse.dreambooth import (
    DREAMBOOTH_RUNS,
    GLYPH_TINY_LORA,
    LORA_TARGETS,
    add_lora,
    class_caption,
    dreambooth,
    dreambooth_loss_fn,
    load_dreambooth,
    load_lora,
    lora_state_dict,
    prior_dataset,
    save_lora,
)
from diffcourse.inversion import _token_id, insert_token, save_token
from diffcourse.latent import encode_prompt, load_glyph_sd, save_parts, text_to_image
from diffcourse.schedules import Schedule

warnings.filterwarnings('ignore', message='.*safety checker.*')
IDENTIFIER = '<sks>'
PROMPTS = ['a <sks> bold serif capital A', 'a <sks> mono digit 7', 'an <sks> italic lowercase g']


def own_weights(unet) -> dict:
    "The U-Net's own weights under their own names (peft moves a wrapped layer's weight to `base_layer`)."
    return {k.replace('.base_layer', ''): v.clone() for k, v in unet.state_dict().items() if 'lora_' not in k}


def images_and_captions(n=8):
    from diffcourse.data import load_glyphs

    g = load_glyphs('test')
    return g.images[:n], [insert_token(c, IDENTIFIER) for c in g.captions[:n]]


def test_adapter_computes_eq_2_and_starts_as_the_identity():
    unet = load_glyph_sd().unet
    z, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 700])
    c = torch.randn(2, 16, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    before = unet(z, t, encoder_hidden_states=c).sample
    n = add_lora(unet, rank=3)
    assert torch.equal(unet(z, t, encoder_hidden_states=c).sample, before)  # B = 0
    layers = [m for name, m in unet.named_modules() if name.endswith(LORA_TARGETS) and hasattr(m, 'lora_A')]
    assert n == sum(3 * (m.in_features + m.out_features) for m in layers)  # r (k + d) per layer
    assert n == sum(p.numel() for p in unet.parameters() if p.requires_grad)  # and nothing else learns
    q = layers[0]
    with torch.no_grad():
        q.lora_B['default'].weight.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(4, q.in_features, generator=torch.Generator().manual_seed(3))
    A, B = q.lora_A['default'].weight, q.lora_B['default'].weight
    want = q.base_layer(x) + (x @ A.T) @ B.T  # alpha = r: scale 1
    # float32 sums of at most 64 products of O(1) terms: ~64 * 6e-8 relative, 1e-5 allowed
    torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)


def test_loss_is_linear_in_the_prior_weight():
    sd = load_glyph_sd()
    imgs, caps = images_and_captions()
    _token_id(sd.tokenizer, sd.text_encoder, IDENTIFIER)
    ctx = encode_prompt(sd.tokenizer, sd.text_encoder, caps)
    ctx_c = encode_prompt(sd.tokenizer, sd.text_encoder, [class_caption(c, IDENTIFIER) for c in caps])
    batch = prior_dataset(sd.vae, imgs, imgs.flip(-1)).tensors
    sch = Schedule.from_betas(sd.scheduler.betas)
    with torch.no_grad():
        L = [
            dreambooth_loss_fn(ctx, ctx_c, sch, lam, torch.Generator().manual_seed(0))(sd.unet, batch).item()
            for lam in (0.0, 1.0, 3.0)
        ]
    assert L[1] > L[0]
    # the same draws: L(3) - L(0) = 3 (L(1) - L(0)); float32 means of O(1) terms, 1e-5 allowed
    assert abs((L[2] - L[0]) - 3 * (L[1] - L[0])) < 1e-5


@pytest.mark.parametrize('rank', [2, None])
def test_a_short_run_learns_and_a_lora_run_leaves_the_unet_alone(rank):
    sd = load_glyph_sd()
    frozen = own_weights(sd.unet)
    imgs, caps = images_and_captions()
    st = dreambooth(sd, imgs, caps, IDENTIFIER, rank=rank, steps=3, lr=1e-3, batch_size=4, progress=False)
    assert st.step == 3 and len(st.losses) == 3
    now = own_weights(sd.unet)
    assert sorted(now) == sorted(frozen)
    moved = [k for k, v in frozen.items() if not torch.equal(v, now[k])]
    if rank is None:
        assert moved  # every weight may learn
    else:
        assert not moved  # the U-Net's own weights are untouched
        n_a = len([k for k in sd.unet.state_dict() if k.endswith('lora_A.default.weight')])
        assert n_a > 0 and len(lora_state_dict(sd.unet)) == 2 * n_a


def test_saved_adapter_reloads_to_the_same_images(tmp_path):
    sd = load_glyph_sd()
    add_lora(sd.unet, rank=2)
    with torch.no_grad():
        for name, p in sd.unet.named_parameters():
            if 'lora_B' in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    _token_id(sd.tokenizer, sd.text_encoder, IDENTIFIER)
    path = save_lora(tmp_path / 'a.safetensors', sd.unet, IDENTIFIER, note='test')
    again = load_glyph_sd()
    assert load_lora(again, path) == IDENTIFIER
    g = lambda: torch.Generator().manual_seed(0)
    a = text_to_image(sd, PROMPTS, steps=5, guidance_scale=3.0, generator=g())
    b = text_to_image(again, PROMPTS, steps=5, guidance_scale=3.0, generator=g())
    assert torch.equal(a, b)


def test_shipped_adapter_in_stable_diffusion_pipeline_matches_our_loop(tmp_path):
    from diffusers import StableDiffusionPipeline

    start = load_glyph_sd()
    _token_id(start.tokenizer, start.text_encoder, IDENTIFIER)
    save_parts(load_glyph_sd(), tmp_path / 'sd')
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / 'sd', safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    word = save_token(tmp_path / 'w.safetensors', IDENTIFIER, start.text_encoder.get_input_embeddings().weight[-1])
    pipe.load_textual_inversion(str(word))
    pipe.load_lora_weights(str(weights_path(GLYPH_TINY_LORA)))
    ours = load_glyph_sd()
    assert load_lora(ours) == IDENTIFIER
    kw = dict(guidance_scale=4.0, output_type='pt')
    ref = pipe(PROMPTS, num_inference_steps=20, generator=torch.Generator().manual_seed(5), **kw).images
    mine = text_to_image(ours, PROMPTS, steps=20, guidance_scale=4.0, generator=torch.Generator().manual_seed(5))
    # the same modules and float32 operations in the same order for 20 steps (lesson 09): 1e-4 allowed
    torch.testing.assert_close(mine / 2 + 0.5, ref, rtol=0, atol=1e-4)
    plain = text_to_image(
        load_glyph_sd(),
        [p.replace(' <sks>', '') for p in PROMPTS],
        steps=20,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(5),
    )
    assert (mine - plain).abs().max() > 0.1  # the adapter changes what is drawn


@pytest.mark.parametrize('name', DREAMBOOTH_RUNS)
def test_shipped_runs_load_and_record_what_they_trained(name):
    sd = load_glyph_sd()
    assert load_dreambooth(sd, name) == IDENTIFIER
    info, args = describe(name), describe(name)['recipe']['args']
    unet_params = sum(p.numel() for n, p in load_glyph_sd().unet.named_parameters())
    if args['rank'] is None:
        assert info['trained_parameters'] == unet_params
        assert sorted(load(name).models) == ['unet']
    else:
        assert 0 < info['trained_parameters'] < unet_params / 10
        assert info['trained_parameters'] == sum(t.numel() for t in load(name).tensors.values())
    assert info['steps'] == args['steps'] and info['images'] == 565


def layer_name():
    return 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'


def crafted(tmp_path, tensors, name='bad.safetensors'):
    save_file(tensors, str(tmp_path / name))
    return tmp_path / name


BAD_FILES = {
    'not a layer': ({'unet.nowhere.lora_A.weight': torch.zeros(2, 32)}, 'is not a LoRA factor'),
    'not a factor': ({f'{layer_name()}.lora_C.weight': torch.zeros(2, 32)}, 'is not a LoRA factor'),
    'wrong shape': (
        {f'{layer_name()}.lora_A.weight': torch.zeros(2, 31), f'{layer_name()}.lora_B.weight': torch.zeros(32, 2)},
        'wants finite factors A (r, 32) and B (32, r)',
    ),
    'half a pair': ({f'{layer_name()}.lora_A.weight': torch.zeros(2, 32)}, 'wants finite factors'),
    'not finite': (
        {
            f'{layer_name()}.lora_A.weight': torch.full((2, 32), float('nan')),
            f'{layer_name()}.lora_B.weight': torch.zeros(32, 2),
        },
        'wants finite factors',
    ),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_crafted_files_are_refused_before_the_unet_changes(tmp_path, case):
    tensors, words = BAD_FILES[case]
    sd = load_glyph_sd()
    before = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    n_vocab = len(sd.tokenizer)
    expect_clear_error(lambda: load_lora(sd, crafted(tmp_path, tensors), identifier='<x>'), ValueError, words)
    assert not getattr(sd.unet, 'peft_config', None) and len(sd.tokenizer) == n_vocab
    assert all(torch.equal(v, sd.unet.state_dict()[k]) for k, v in before.items())


def test_mixed_ranks_and_other_files_are_refused(tmp_path):
    b = 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q'
    t = {
        f'{layer_name()}.lora_A.weight': torch.zeros(2, 32),
        f'{layer_name()}.lora_B.weight': torch.zeros(32, 2),
        f'{b}.lora_A.weight': torch.zeros(3, 32),
        f'{b}.lora_B.weight': torch.zeros(32, 3),
    }
    expect_clear_error(lambda: load_lora(load_glyph_sd(), crafted(tmp_path, t), '<x>'), ValueError, 'ranks [2, 3]')
    tok = weights_path('glyph_tiny_token.safetensors')
    expect_clear_error(lambda: load_lora(load_glyph_sd(), tok), ValueError, 'names no identifier')
    sd_file = weights_path('glyph_sd.safetensors')
    expect_clear_error(lambda: load_lora(load_glyph_sd(), sd_file, '<x>'), ValueError, 'holds the models')
    save_file({'x': torch.zeros(1)}, str(tmp_path / 'other.safetensors'), metadata={'format': 'pt'})
    expect_clear_error(
        lambda: load_lora(load_glyph_sd(), tmp_path / 'other.safetensors', '<x>'), ValueError, "format 'pt'"
    )


BAD = {
    'rank 0': (lambda: add_lora(load_glyph_sd().unet, 0), ValueError, 'rank must be a positive integer'),
    'rank 2.5': (lambda: add_lora(load_glyph_sd().unet, 2.5), ValueError, 'got 2.5'),
    'rank True': (lambda: add_lora(load_glyph_sd().unet, True), ValueError, 'got True'),
    'not a diffusers model': (lambda: add_lora(nn.Linear(2, 2)), TypeError, 'add_adapter'),
    'identifier in the vocabulary': (
        lambda: dreambooth(load_glyph_sd(), *images_and_captions(2), 'capital', prior_weight=0.0, steps=1),
        ValueError,
        "'capital' is already in the vocabulary",
    ),
    'rank in dreambooth': (
        lambda: dreambooth(load_glyph_sd(), *images_and_captions(2), IDENTIFIER, rank=-2, steps=1),
        ValueError,
        'got -2',
    ),
    'negative prior weight': (
        lambda: dreambooth(load_glyph_sd(), *images_and_captions(2), IDENTIFIER, prior_weight=-1.0, steps=1),
        ValueError,
        'prior_weight',
    ),
    'caption without identifier': (
        lambda: dreambooth(load_glyph_sd(), images_and_captions(2)[0], ['a capital A'] * 2, IDENTIFIER, steps=1),
        ValueError,
        "must contain the token '<sks>'",
    ),
    'class images of another shape': (
        lambda: prior_dataset(load_glyph_sd().vae, torch.zeros(4, 1, 16, 16), torch.zeros(3, 1, 16, 16)),
        ValueError,
        "class_imgs must have the concept images' shape",
    ),
    'class caption without identifier': (lambda: class_caption('a capital A', '<v>'), ValueError, "'<v>'"),
    'unknown run': (lambda: load_dreambooth(load_glyph_sd(), 'glyph_sd'), ValueError, 'name must be one of'),
    'no adapters to save': (lambda: lora_state_dict(load_glyph_sd().unet), ValueError, 'has no LoRA adapters'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_gets_a_clear_error(case):
    expect_clear_error(*BAD[case])


def test_adapter_loads_once():
    sd = load_glyph_sd()
    load_lora(sd)
    expect_clear_error(lambda: load_lora(sd), ValueError, 'has adapters already')
