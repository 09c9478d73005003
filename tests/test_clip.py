"""Tests of diffcourse.clip (lesson 08b): the tokenizer loads with transformers, the loss equals transformers',
save/load round trips (shipped format and Hugging Face folders, offline), prompt checks, and a brief training run."""
import json, tempfile, warnings
from pathlib import Path
import pytest
import torch

from diffcourse.clip import (bpe_merges, make_glyph_tokenizer, tiny_clip_config, clip_loss, caption_targets,
                             drop_style_words, char_prompt, clip_loss_fn, encode_text, encode_images, check_prompts,
                             save_glyph_clip, load_glyph_clip, save_clip, load_clip, clip_text_model, clip_similarity,
                             retrieval_accuracy, GLYPH_CLIP)
from diffcourse.core import weights_path

torch.set_num_threads(1)
CAPTIONS = ['a bold serif capital A', 'an italic mono digit 7', 'a sans lowercase g', 'a bold italic serif capital B',
            'a mono lowercase q', 'a serif digit 0']


@pytest.fixture(scope='module')
def tok_dir():
    d = tempfile.mkdtemp()
    make_glyph_tokenizer(d, captions=CAPTIONS)
    return d


@pytest.fixture(scope='module')
def tiny(tok_dir):
    from transformers import CLIPModel, CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1, vision_hidden=32, vision_layers=1,
                                       projection_dim=16)).eval()
    return model, tok


def test_bpe_makes_every_word_one_token(tok_dir):
    from transformers import AutoTokenizer, CLIPTokenizer
    words = sorted({w.lower() for c in CAPTIONS for w in c.split()})
    for tok in (CLIPTokenizer.from_pretrained(tok_dir), AutoTokenizer.from_pretrained(tok_dir)):
        for w in words: assert tok.tokenize(w) == [w + '</w>'], (w, tok.tokenize(w))
        ids = tok('a bold serif capital A').input_ids
        assert ids[0] == 0 and ids[-1] == 1 and len(ids) == 7       # start, five words, end
        assert tok.model_max_length == 16 and tok.pad_token_id == 1
    assert sorted(p.name for p in Path(tok_dir).iterdir()) == ['merges.txt', 'tokenizer_config.json', 'vocab.json']
    assert bpe_merges(['ab', 'abc']) and bpe_merges([]) == []


def test_clip_loss_matches_transformers(tiny):
    model, tok = tiny
    ids = tok(CAPTIONS, padding='max_length', max_length=16, return_tensors='pt').input_ids
    images = torch.randn(len(CAPTIONS), 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model.logit_scale.data.fill_(1.3)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=images, return_loss=True)
        ours = clip_loss(out.image_embeds, out.text_embeds, model.logit_scale)
        torch.testing.assert_close(ours, out.loss)
        torch.testing.assert_close(clip_loss(out.image_embeds, out.text_embeds, model.logit_scale, torch.eye(len(CAPTIONS))), out.loss)
        torch.testing.assert_close(torch.nn.functional.normalize(encode_images(model, images), dim=-1), out.image_embeds)
        torch.testing.assert_close(torch.nn.functional.normalize(encode_text(model, tok, CAPTIONS).pooled, dim=-1), out.text_embeds)


def test_clip_loss_multi_positive():
    u = torch.tensor([[1., 0.], [1., 0.], [0., 1.]])
    targets = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 1.]])
    s = torch.tensor(5.)
    v = torch.tensor([[0.6, 0.8], [1., 0.], [0.3, -1.]])
    logits = s.exp() * torch.nn.functional.normalize(u, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T
    p_txt, p_img = targets / targets.sum(1, keepdim=True), targets.T / targets.T.sum(1, keepdim=True)
    ref = (-(p_txt * logits.log_softmax(1)).sum(1).mean() - (p_img * logits.T.log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(clip_loss(u, v, s, targets), ref)
    with pytest.raises(ValueError, match='same shape'): clip_loss(u, u[:2], s)
    with pytest.raises(ValueError, match='at least one match'): clip_loss(u, u, s, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r'targets must be \(B, B\)'): clip_loss(u, u, s, torch.ones(2, 2))


def test_caption_helpers():
    g = torch.Generator().manual_seed(0)
    assert drop_style_words('an italic mono digit 7', 1.) == 'a digit 7'
    assert drop_style_words('a bold italic serif capital B', 0.) == 'a bold italic serif capital B'
    short = drop_style_words('a bold italic serif capital B', 0.5, g)
    assert short.endswith('capital B') and short.split()[0] in ('a', 'an')
    t = caption_targets(['a capital A', 'a mono digit 7'], ['a bold serif capital A', 'an italic mono digit 7'])
    assert t.tolist() == [[1., 0.], [0., 1.]]
    assert char_prompt('Q') == 'a capital Q' and char_prompt('q') == 'a lowercase q' and char_prompt('3') == 'a digit 3'
    for bad in ('AB', '', 'é', '!'):
        with pytest.raises(ValueError, match='one ASCII letter or digit'): char_prompt(bad)


def test_encode_text_and_prompt_checks(tiny):
    model, tok = tiny
    enc = encode_text(model, tok, ['a bold serif capital A', 'a digit 7'])
    assert enc.hidden.shape == (2, 16, 32) and enc.pooled.shape == (2, 16) and enc.input_ids.shape == (2, 16)
    te = clip_text_model(model)
    with torch.no_grad(): torch.testing.assert_close(te(input_ids=enc.input_ids).last_hidden_state, enc.hidden)
    assert encode_text(model, tok, '', allow_empty=True).hidden.shape == (1, 16, 32)
    with pytest.raises(ValueError, match='Empty prompt'): encode_text(model, tok, '   ')
    with pytest.raises(ValueError, match='No prompts'): encode_text(model, tok, [])
    with pytest.raises(TypeError, match='must be strings'): encode_text(model, tok, [3])
    with pytest.raises(ValueError, match="cannot spell: \\['ß'\\]"): encode_text(model, tok, 'a capital ß')
    long = 'a bold serif capital A ' * 4
    with pytest.warns(UserWarning, match=r"is 22 tokens \(with start/end\), the text encoder takes 16: it is truncated to 'a bold serif capital a a bold serif capital a a bold serif capital', dropping 'a a bold serif capital a'"):
        encode_text(model, tok, long)
    with pytest.warns(UserWarning, match=r"\['zebra'\] are not words of the glyph captions"):
        check_prompts(tok, 'a zebra')


def test_save_load_round_trips(tiny):
    model, tok = tiny
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = ['a capital A', 'a mono digit 7']
    ref = clip_similarity(model, tok, x, prompts)
    with tempfile.TemporaryDirectory() as d:
        p = save_glyph_clip(model, tok, Path(d)/'c.safetensors', steps=3, command='none')
        m2, t2 = load_glyph_clip(p)
        torch.testing.assert_close(clip_similarity(m2, t2, x, prompts), ref)
        assert t2('a bold serif capital A').input_ids == tok('a bold serif capital A').input_ids
        save_clip(model, tok, Path(d)/'hf')
        m3, t3 = load_clip(Path(d)/'hf', local_files_only=True)
        torch.testing.assert_close(clip_similarity(m3, t3, x, prompts), ref)
        with pytest.raises(ValueError, match='wants a model id or a folder'): load_clip(p)
        (Path(d)/'bad.safetensors').write_bytes(b'x')
        with pytest.raises(ValueError, match='not a valid safetensors'): load_glyph_clip(Path(d)/'bad.safetensors')


def test_load_clip_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(OSError, match='point load_clip at a local folder'):
        load_clip('diffcourse/no-such-clip-model', local_files_only=True)


def test_retrieval_accuracy():
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    acc = retrieval_accuracy(sim, ['a', 'b', 'b'], ['a', 'b'])
    assert acc == {'image->text': 2 / 3, 'text->image': 1.0}


def test_brief_training_loss_falls(tok_dir):
    from transformers import CLIPModel, CLIPTokenizer
    from diffcourse.data import load_glyphs
    from diffcourse.training import train
    tok = CLIPTokenizer.from_pretrained(make_glyph_tokenizer(tempfile.mkdtemp()).name_or_path)
    gl = load_glyphs('train')
    idx = torch.randperm(len(gl.labels), generator=torch.Generator().manual_seed(0))[:256]
    batches = [(gl.images[idx[i:i + 64]], gl.labels[idx[i:i + 64]], [gl.captions[j] for j in idx[i:i + 64]]) for i in range(0, 256, 64)]
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1, vision_hidden=32, vision_layers=2, projection_dim=32))
    # full captions, no augmentation: the easy task leaves CLIP's initial plateau (loss ~ log B) within a few dozen steps
    st = train(model, clip_loss_fn(tok, 0., torch.Generator().manual_seed(0), augment=False), batches, 40, 3e-3, ema_decay=0, progress=False)
    assert sum(st.losses[-8:]) / 8 < sum(st.losses[:8]) / 8 - 0.2


@pytest.mark.skipif(not weights_path(GLYPH_CLIP, must_exist=False).is_file(), reason='the shipped glyph CLIP is not there yet')
def test_shipped_glyph_clip_zero_shot():
    from diffcourse.data import load_glyphs, GLYPH_CHARS
    model, tok = load_glyph_clip()
    test = load_glyphs('test')
    pred = clip_similarity(model, tok, test.images, [char_prompt(c) for c in GLYPH_CHARS]).argmax(1)
    assert (pred == test.labels).float().mean() > 0.6
    assert model.config.text_config.hidden_size == 64 and tok.model_max_length == 16


def test_augment_glyphs():
    from diffcourse.clip import augment_glyphs
    x = torch.full((4, 1, 16, 16), -1.); x[:, :, 6:10, 6:10] = 1.
    torch.testing.assert_close(augment_glyphs(x, shift=0, p_blur=0, p_noise=0), x)
    a = augment_glyphs(x, torch.Generator().manual_seed(0), shift=2, p_blur=0, p_noise=0)
    assert a.shape == x.shape and (a == 1).sum() == (x == 1).sum()           # shifts move the square, never cut it
    b = augment_glyphs(x, torch.Generator().manual_seed(0), shift=0, p_blur=1., p_noise=0)
    assert (b > -1).sum() > (x > -1).sum()                                    # blur spreads ink


def test_cutouts():
    from diffcourse.clip import cutouts
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    c = cutouts(x, 5, generator=torch.Generator().manual_seed(0))
    assert c.shape == (10, 1, 16, 16)
    torch.testing.assert_close(cutouts(x, 3, min_size=1.), x.repeat(3, 1, 1, 1))   # full-size crops are the image
    with pytest.raises(ValueError, match='n must be >= 1'): cutouts(x, 0)
    with pytest.raises(ValueError, match=r'min_size must lie in \(0, 1\]'): cutouts(x, 2, min_size=0.)


def test_clip_guidance_equals_its_equation(tiny):
    "clip_guidance(sigma_cap=None) is eq. (C1): D + s sigma^2 grad_x logit(D(x)); the cap rescales the push by (cap/sigma)^2."
    from diffcourse.clip import clip_guidance
    from diffcourse.samplers import Denoiser, sample
    from diffcourse.schedules import Schedule
    from diffcourse.unet import UNet
    model, tok = tiny
    torch.manual_seed(0)
    net = UNet(channels=(8, 16), attn=(False, True)).eval()
    for p in net.conv_out.parameters(): torch.nn.init.normal_(p, std=0.1)
    D = Denoiser(net, Schedule.from_name('linear', 1000))
    x, sigma, s = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 3, torch.tensor(3.), 0.5
    with torch.no_grad(): v = torch.nn.functional.normalize(encode_text(model, tok, 'a capital A').pooled, dim=-1)
    xr = x.clone().requires_grad_(True)
    x0 = D(xr, sigma)
    logit = model.logit_scale.exp() * (torch.nn.functional.normalize(encode_images(model, x0), dim=-1) * v).sum(-1)
    grad, = torch.autograd.grad(logit.sum(), xr)
    torch.testing.assert_close(clip_guidance(D, model, tok, 'a capital A', s, sigma_cap=None)(x, sigma), x0.detach() + s * sigma ** 2 * grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clip_guidance(D, model, tok, 'a capital A', s, sigma_cap=1.)(x, sigma), x0.detach() + s * 1. * grad, rtol=1e-4, atol=1e-4)
    out = sample('ddim', clip_guidance(D, model, tok, ['a capital A', 'a digit 7'], s, n_cutouts=3, generator=torch.Generator().manual_seed(0)),
                 (2, 1, 16, 16), 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='3 prompts for a batch of 2'):
        clip_guidance(D, model, tok, ['a', 'b', 'c'], s)(x, sigma)
    with pytest.raises(ValueError, match='Empty prompt'): clip_guidance(D, model, tok, '', s)
    with pytest.raises(ValueError, match='finite number >= 0'): clip_guidance(D, model, tok, 'a capital A', float('nan'))
