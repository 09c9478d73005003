"""Tests of diffcourse.clip (lesson 08b): the tokenizer loads with transformers, the loss equals transformers',
save/load round trips (shipped format and Hugging Face folders, offline), prompt checks, and a brief training run."""

import json, os, tempfile, warnings
from pathlib import Path
import pytest
import torch
from safetensors.torch import save_file

from diffcourse.clip import (
    bpe_merges,
    make_glyph_tokenizer,
    tiny_clip_config,
    clip_loss,
    caption_targets,
    drop_style_words,
    char_prompt,
    clip_loss_fn,
    encode_text,
    encode_images,
    check_prompts,
    save_glyph_clip,
    load_glyph_clip,
    save_clip,
    load_clip,
    clip_text_model,
    clip_similarity,
    retrieval_accuracy,
    GLYPH_CLIP,
    augment_glyphs,
    clip_log_prob,
)
from diffcourse.artifacts import tokenizer_spec
from diffcourse.core import weights_path, load_safetensors, save_safetensors
from test_data import silent_server, socket_closed_port, no_network, online  # noqa: F401 (fixtures, written once)

CAPTIONS = [
    'a bold serif capital A',
    'an italic mono digit 7',
    'a sans lowercase g',
    'a bold italic serif capital B',
    'a mono lowercase q',
    'a serif digit 0',
]


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
    model = CLIPModel(
        tiny_clip_config(len(tok), text_hidden=32, text_layers=1, vision_hidden=32, vision_layers=1, projection_dim=16)
    ).eval()
    return model, tok


def test_bpe_makes_every_word_one_token(tok_dir):
    from transformers import AutoTokenizer, CLIPTokenizer

    words = sorted({w.lower() for c in CAPTIONS for w in c.split()})
    for tok in (CLIPTokenizer.from_pretrained(tok_dir), AutoTokenizer.from_pretrained(tok_dir)):
        for w in words:
            assert tok.tokenize(w) == [w + '</w>'], (w, tok.tokenize(w))
        ids = tok('a bold serif capital A').input_ids
        assert ids[0] == 0 and ids[-1] == 1 and len(ids) == 7  # start, five words, end
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
        # the loss (~log 6 = 1.8) from logits |l| < e^1.3 = 3.7, in the same float32 operations as transformers' up to
        # their order: ~10 roundings of 3.7, 4.4e-6; 2e-5 allowed
        torch.testing.assert_close(ours, out.loss, rtol=0, atol=2e-5)
        eye = torch.eye(len(CAPTIONS))
        torch.testing.assert_close(
            clip_loss(out.image_embeds, out.text_embeds, model.logit_scale, eye), out.loss, rtol=0, atol=2e-5
        )
        # unit vectors, the same model calls: a rounding or two of values <= 1 apart; 1e-6 allowed
        torch.testing.assert_close(
            torch.nn.functional.normalize(encode_images(model, images), dim=-1), out.image_embeds, rtol=0, atol=1e-6
        )
        torch.testing.assert_close(
            torch.nn.functional.normalize(encode_text(model, tok, CAPTIONS).pooled, dim=-1),
            out.text_embeds,
            rtol=0,
            atol=1e-6,
        )


def test_clip_loss_multi_positive():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    s = torch.tensor(5.0)
    v = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.3, -1.0]])
    logits = s.exp() * torch.nn.functional.normalize(u, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T
    p_txt, p_img = targets / targets.sum(1, keepdim=True), targets.T / targets.T.sum(1, keepdim=True)
    ref = (-(p_txt * logits.log_softmax(1)).sum(1).mean() - (p_img * logits.T.log_softmax(1)).sum(1).mean()) / 2
    # logits up to e^5 = 148; log_softmax and the weighted means take ~5 roundings of 148 (1.2e-7 each): 9e-5;
    # 2e-4 allowed
    torch.testing.assert_close(clip_loss(u, v, s, targets), ref, rtol=0, atol=2e-4)
    with pytest.raises(ValueError, match='same shape'):
        clip_loss(u, u[:2], s)
    with pytest.raises(ValueError, match='at least one match'):
        clip_loss(u, u, s, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r'targets must be \(B, B\)'):
        clip_loss(u, u, s, torch.ones(2, 2))


def test_caption_helpers():
    g = torch.Generator().manual_seed(0)
    assert drop_style_words('an italic mono digit 7', 1.0) == 'a digit 7'
    assert drop_style_words('a bold italic serif capital B', 0.0) == 'a bold italic serif capital B'
    short = drop_style_words('a bold italic serif capital B', 0.5, g)
    assert short.endswith('capital B') and short.split()[0] in ('a', 'an')
    t = caption_targets(['a capital A', 'a mono digit 7'], ['a bold serif capital A', 'an italic mono digit 7'])
    assert t.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert char_prompt('Q') == 'a capital Q' and char_prompt('q') == 'a lowercase q' and char_prompt('3') == 'a digit 3'
    for bad in ('AB', '', 'é', '!'):
        with pytest.raises(ValueError, match='one ASCII letter or digit'):
            char_prompt(bad)


def test_encode_text_and_prompt_checks(tiny):
    model, tok = tiny
    enc = encode_text(model, tok, ['a bold serif capital A', 'a digit 7'])
    assert enc.hidden.shape == (2, 16, 32) and enc.pooled.shape == (2, 16) and enc.input_ids.shape == (2, 16)
    te = clip_text_model(model)
    with torch.no_grad():  # the same weights and ids: |h| < 5 after the final layer norm, a few roundings apart at most
        torch.testing.assert_close(te(input_ids=enc.input_ids).last_hidden_state, enc.hidden, rtol=0, atol=1e-5)
    assert encode_text(model, tok, '', allow_empty=True).hidden.shape == (1, 16, 32)
    with pytest.raises(ValueError, match='Empty prompt'):
        encode_text(model, tok, '   ')
    with pytest.raises(ValueError, match='No prompts'):
        encode_text(model, tok, [])
    with pytest.raises(TypeError, match='must be strings'):
        encode_text(model, tok, [3])
    with pytest.raises(ValueError, match="cannot spell: \\['ß'\\]"):
        encode_text(model, tok, 'a capital ß')
    long = 'a bold serif capital A ' * 4
    with pytest.warns(
        UserWarning,
        match=(
            r"is 22 tokens \(with start/end\), the text encoder takes 16: it is truncated to"
            r" 'a bold serif capital a a bold serif capital a a bold serif capital',"
            r" dropping 'a a bold serif capital a'"
        ),
    ):
        encode_text(model, tok, long)
    with pytest.warns(UserWarning, match=r"\['zebra'\] are not words of the glyph captions"):
        check_prompts(tok, 'a zebra')


def test_save_load_round_trips(tiny):
    model, tok = tiny
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = ['a capital A', 'a mono digit 7']
    ref = clip_similarity(model, tok, x, prompts)
    with tempfile.TemporaryDirectory() as d:
        p = save_glyph_clip(model, tok, Path(d) / 'c.safetensors', steps=3, command='none')
        m2, t2 = load_glyph_clip(p)
        torch.testing.assert_close(
            clip_similarity(m2, t2, x, prompts), ref, rtol=0, atol=1e-6
        )  # same weights; |cos| <= 1
        assert t2('a bold serif capital A').input_ids == tok('a bold serif capital A').input_ids
        save_clip(model, tok, Path(d) / 'hf')
        m3, t3 = load_clip(Path(d) / 'hf', local_files_only=True)
        torch.testing.assert_close(clip_similarity(m3, t3, x, prompts), ref, rtol=0, atol=1e-6)  # as above
        with pytest.raises(ValueError, match='wants a model id or a folder'):
            load_clip(p)
        (Path(d) / 'bad.safetensors').write_bytes(b'x')
        with pytest.raises(ValueError, match='not a valid safetensors'):
            load_glyph_clip(Path(d) / 'bad.safetensors')


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
    batches = [
        (gl.images[idx[i : i + 64]], gl.labels[idx[i : i + 64]], [gl.captions[j] for j in idx[i : i + 64]])
        for i in range(0, 256, 64)
    ]
    torch.manual_seed(0)
    model = CLIPModel(
        tiny_clip_config(len(tok), text_hidden=32, text_layers=1, vision_hidden=32, vision_layers=2, projection_dim=32)
    )
    # full captions, no augmentation: the easy task leaves CLIP's initial plateau (loss ~ log B) within a few dozen
    # steps
    st = train(
        model,
        clip_loss_fn(tok, 0.0, torch.Generator().manual_seed(0), augment=False),
        batches,
        40,
        3e-3,
        ema_decay=0,
        progress=False,
    )
    assert sum(st.losses[-8:]) / 8 < sum(st.losses[:8]) / 8 - 0.2


@pytest.mark.skipif(
    not weights_path(GLYPH_CLIP, must_exist=False).is_file(), reason='the shipped glyph CLIP is not there yet'
)
def test_shipped_glyph_clip_zero_shot():
    from diffcourse.data import load_glyphs, GLYPH_CHARS

    model, tok = load_glyph_clip()
    test = load_glyphs('test')
    pred = clip_similarity(model, tok, test.images, [char_prompt(c) for c in GLYPH_CHARS]).argmax(1)
    assert (pred == test.labels).float().mean() > 0.6
    assert model.config.text_config.hidden_size == 64 and tok.model_max_length == 16


def test_augment_glyphs():
    from diffcourse.clip import augment_glyphs

    x = torch.full((4, 1, 16, 16), -1.0)
    x[:, :, 6:10, 6:10] = 1.0
    torch.testing.assert_close(
        augment_glyphs(x, shift=0, p_blur=0, p_noise=0), x, rtol=0, atol=0
    )  # x + 0 * noise: exact
    a = augment_glyphs(x, torch.Generator().manual_seed(0), shift=2, p_blur=0, p_noise=0)
    assert a.shape == x.shape and (a == 1).sum() == (x == 1).sum()  # shifts move the square, never cut it
    b = augment_glyphs(x, torch.Generator().manual_seed(0), shift=0, p_blur=1.0, p_noise=0)
    assert (b > -1).sum() > (x > -1).sum()  # blur spreads ink


def test_cutouts():
    from diffcourse.clip import cutouts

    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    c = cutouts(x, 5, generator=torch.Generator().manual_seed(0))
    assert c.shape == (10, 1, 16, 16)
    # full-size crops are the image: bilinear weights 1 and 0; one rounding of a weight would move values < 512 by 6e-5
    torch.testing.assert_close(cutouts(x, 3, min_size=1.0), x.repeat(3, 1, 1, 1), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match='cutouts: n must be an integer >= 1, got 0'):
        cutouts(x, 0)
    with pytest.raises(ValueError, match='cutouts: min_size must be a finite number > 0 and <= 1, got 0.0'):
        cutouts(x, 2, min_size=0.0)
    with pytest.raises(ValueError, match=r'cutouts: x must be a \(B, C, H, W\) tensor'):
        cutouts(x[0], 2)


def test_clip_guidance_equals_its_equation(tiny):
    """clip_guidance(sigma_cap=None) is eq. (C1): D + s sigma^2 grad_x logit(D(x));
    the cap rescales the push by (cap/sigma)^2."""
    from diffcourse.clip import clip_guidance
    from diffcourse.samplers import Denoiser, sample
    from diffcourse.schedules import Schedule
    from diffcourse.unet import UNet

    model, tok = tiny
    torch.manual_seed(0)
    net = UNet(channels=(8, 16), attn=(False, True)).eval()
    for p in net.conv_out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    D = Denoiser(net, Schedule.from_name('linear', 1000))
    x, sigma, s = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 3, torch.tensor(3.0), 0.5
    with torch.no_grad():
        v = torch.nn.functional.normalize(encode_text(model, tok, 'a capital A').pooled, dim=-1)
    xr = x.clone().requires_grad_(True)
    x0 = D(xr, sigma)
    logit = model.logit_scale.exp() * (torch.nn.functional.normalize(encode_images(model, x0), dim=-1) * v).sum(-1)
    (grad,) = torch.autograd.grad(logit.sum(), xr)
    # the same forward and backward passes; only the last products come in another order: a few roundings of
    # s sigma^2 |grad| and |x0| (< 20): 5 * 20 * 1.2e-7 = 1.2e-5; 1e-4 allowed
    uncapped = clip_guidance(D, model, tok, 'a capital A', s, sigma_cap=None)(x, sigma)
    torch.testing.assert_close(uncapped, x0.detach() + s * sigma**2 * grad, rtol=0, atol=1e-4)
    capped = clip_guidance(D, model, tok, 'a capital A', s, sigma_cap=1.0)(x, sigma)
    torch.testing.assert_close(capped, x0.detach() + s * 1.0 * grad, rtol=0, atol=1e-4)
    out = sample(
        'ddim',
        clip_guidance(
            D, model, tok, ['a capital A', 'a digit 7'], s, n_cutouts=3, generator=torch.Generator().manual_seed(0)
        ),
        (2, 1, 16, 16),
        3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='3 prompts for a batch of 2'):
        clip_guidance(D, model, tok, ['a', 'b', 'c'], s)(x, sigma)
    with pytest.raises(ValueError, match='Empty prompt'):
        clip_guidance(D, model, tok, '', s)
    with pytest.raises(ValueError, match='finite number >= 0'):
        clip_guidance(D, model, tok, 'a capital A', float('nan'))


# ---- loading a file builds one fixed class, checked first; nothing is written, nothing else is built ----


pytestmark = pytest.mark.usefixtures('private_tempdir')  # what a call leaves is its own


def _glyph_temp_folders() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob('glyph_*')}


@pytest.fixture(scope='module')
def saved(tiny, tmp_path_factory):
    model, tok = tiny
    path = save_glyph_clip(model, tok, tmp_path_factory.mktemp('clip') / 'c.safetensors', steps=3)
    return path, *load_safetensors(path)


def _json_or_text(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v  # stored as a JSON string


def _crafted(folder, tensors, meta, **changes):
    """A copy of a saved CLIP with some metadata changed: `config` (JSON text, or other text) replaces its model's
    config, `config_*` keys change one key of it, `vocab`, `merges`, `model_max_length` (JSON text) its tokenizer's."""
    spec = json.loads(meta['models'])['']
    config = _json_or_text(changes.pop('config')) if 'config' in changes else dict(spec['config'])
    for k in [k for k in changes if k.startswith('config_')]:
        config[k[len('config_') :]] = changes.pop(k)
    tok = json.loads(meta['tokenizer'])
    tok.update({k: json.loads(changes.pop(k)) for k in ('vocab', 'merges', 'model_max_length') if k in changes})
    kept = {'models': json.dumps({'': {**spec, 'config': config}}), 'tokenizer': json.dumps(tok)}
    path = Path(folder) / 'crafted.safetensors'
    save_safetensors(tensors, path, metadata={**meta, **kept, **changes})
    return path


@pytest.mark.parametrize(
    'change, error',
    [
        (
            dict(format='diffcourse.weights/1'),
            "is not a diffcourse weights file: expected metadata format 'diffcourse.artifact/1', got 'diffcourse.weig",
        ),
        (dict(config='{not json'), 'the config of a CLIPModel must be a JSON object, got \'"{not json"\''),
        (dict(config='[1, 2]'), "the config of a CLIPModel must be a JSON object, got '[1, 2]'"),
        (dict(config_auto_map={'AutoModel': 'evil.Model'}), "unknown keys ['auto_map']"),
        (dict(config__target_='os.system'), "unknown keys ['_target_']"),
        (dict(config_model_type='bert'), "has model_type 'bert', not 'clip'"),
        (
            dict(config_text_config={'num_hidden_layers': 10**7}),
            'num_hidden_layers = 10000000 in its CLIPTextConfig config',
        ),
        (
            dict(config_text_config={'trust_remote_code': True}),
            "does not fit CLIPTextConfig(",
        ),
        (dict(config_vision_config='big'), 'the config of a CLIPVisionConfig must be a JSON object'),
        (dict(config_projection_dim=10**9), 'shape mismatches'),
        (dict(config_text_config={'hidden_size': 'wide'}), 'does not build a transformers.CLIPModel'),
        (dict(vocab=json.dumps({'a': 0, 'b': 5})), 'its vocab must give 2 non-empty tokens the ids 0..1'),
        (dict(merges=json.dumps([['a b', 'c']])), 'its merges must be pairs of strings without spaces'),
        (dict(model_max_length='1000'), 'model_max_length 1000 must lie in [3, 16]'),
    ],
)
def test_crafted_clip_files_are_refused(saved, tmp_path, tmp_path_factory, monkeypatch, change, error):
    path, tensors, meta = saved
    monkeypatch.chdir(tmp_path_factory.mktemp('cwd'))  # a working folder of its own, empty
    before = _glyph_temp_folders()
    with pytest.raises(ValueError) as e:
        load_glyph_clip(_crafted(tmp_path, tensors, meta, **change))
    assert error in str(e.value) and 'crafted.safetensors' in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['crafted.safetensors']  # nothing written beside it
    assert _glyph_temp_folders() == before and os.listdir() == []  # nor anywhere else


def test_crafted_clip_tensors_are_refused(saved, tmp_path):
    path, tensors, meta = saved
    name = 'text_model.embeddings.token_embedding.weight'  # (vocab, width)
    cases = [
        ({k: v for k, v in tensors.items() if k != name}, f'missing keys (1): {[name]}'),
        ({**tensors, 'extra.weight': torch.zeros(3)}, "unexpected keys (1): ['extra.weight']"),
        ({**tensors, name: tensors[name][..., :1].clone()}, f'shape mismatches (1): [\'{name}: '),
        ({**tensors, name: tensors[name].long()}, 'float and integer tensors swapped (1)'),
    ]
    for crafted, error in cases:
        save_file(crafted, str(tmp_path / 't.safetensors'), metadata=meta)
        with pytest.raises(ValueError, match=r"does not fit the model transformers.CLIPModel") as e:
            load_glyph_clip(tmp_path / 't.safetensors')
        assert error in str(e.value), (error, str(e.value))


def test_the_file_never_chooses_the_class(saved, tmp_path):
    "The config may name other architectures: loading builds a CLIPModel regardless, so the name does nothing."
    from transformers import CLIPModel

    path, tensors, meta = saved
    model, _ = load_glyph_clip(_crafted(tmp_path, tensors, meta, config_architectures=['BertModel']))
    assert type(model) is CLIPModel


def test_tokenizers_leave_no_temporary_folders(saved):
    before = _glyph_temp_folders()
    tok = make_glyph_tokenizer(captions=CAPTIONS)
    model, tok2 = load_glyph_clip(saved[0])
    assert _glyph_temp_folders() == before
    # the tokenizers live in memory: they still tokenize, and save, with their folders gone
    assert tok.tokenize('a bold serif capital A') == ['a</w>', 'bold</w>', 'serif</w>', 'capital</w>', 'a</w>']
    assert tok2('a mono digit 7').input_ids == tok('a mono digit 7').input_ids
    with tempfile.TemporaryDirectory() as d:
        save_glyph_clip(model, tok2, Path(d) / 'again.safetensors')
        kept = json.loads(load_safetensors(Path(d) / 'again.safetensors')[1]['tokenizer'])
        assert kept['merges'] == tokenizer_spec(tok)['merges']
        tok2.save_pretrained(d)
        from transformers import AutoTokenizer

        assert AutoTokenizer.from_pretrained(d)('a mono digit 7').input_ids == tok('a mono digit 7').input_ids


# ---- offline and slow networks: fail in seconds, say what to do ----


def test_load_clip_offline_makes_no_connection(monkeypatch, no_network):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(OSError, match='point load_clip at a local folder') as e:
        load_clip('diffcourse/no-such-clip-model')  # no local_files_only: offline mode alone
    assert 'HF_HUB_OFFLINE=1' in str(e.value) and 'hf download diffcourse/no-such-clip-model --local-dir DIR' in str(
        e.value
    )
    assert no_network == []


def test_load_clip_when_the_hub_never_answers(monkeypatch, online):
    "One probe with a short timeout, then the error; no download attempt, no retries."
    from huggingface_hub import constants

    with silent_server() as (url, accepted):
        monkeypatch.setattr(constants, 'ENDPOINT', url.rstrip('/'))
        with pytest.raises(OSError, match='did not answer within 0.2 s') as e:
            load_clip('someone/some-clip')
    assert len(accepted) == 1 and 'point load_clip at a local folder' in str(e.value)


def test_load_clip_when_the_hub_refuses(monkeypatch, online):
    from huggingface_hub import constants

    with socket_closed_port() as url:
        monkeypatch.setattr(constants, 'ENDPOINT', url)
        with pytest.raises(OSError, match='did not answer within'):
            load_clip('someone/some-clip')


# ---- bad input ----


def test_bad_caption_and_prompt_input(tiny):
    model, tok = tiny
    for bad in ('', 'a', 'bold serif capital A', 'a bold serif', None):
        with pytest.raises(ValueError, match='caption must be a glyph caption such as'):
            drop_style_words(bad)
    with pytest.raises(ValueError, match=r'p must be a finite number >= 0 and <= 1, got 2'):
        drop_style_words('a capital A', 2)
    with pytest.raises(ValueError, match='texts has 1 entries but captions has 2'):
        caption_targets(['a capital A'], ['a capital A', 'a digit 7'])
    with pytest.raises(ValueError, match=r'images must be \(B, 1, 16, 16\) for this CLIP, got \(2, 1, 32, 32\)'):
        encode_images(model, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r'sim must be \(N, M\) = \(3, 2\)'):
        retrieval_accuracy(torch.zeros(2, 3), ['a', 'b', 'c'], ['a', 'b'])
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'):
        clip_similarity(model, tok, torch.zeros(2, 1, 16, 16), ['a capital A'], batch_size=0)
    with pytest.raises(ValueError, match='n_cutouts must be an integer >= 0, got -1'):
        clip_log_prob(model, tok, 'a capital A', -1)
    with pytest.raises(ValueError, match='p_drop must be a finite number >= 0 and <= 1'):
        clip_loss_fn(tok, 1.5)
    with pytest.raises(ValueError, match='p_blur must be a finite number >= 0 and <= 1, got -1'):
        augment_glyphs(torch.zeros(2, 1, 16, 16), p_blur=-1)
    u = torch.randn(3, 4)
    torch.testing.assert_close(
        clip_loss(u, u, 2.0), clip_loss(u, u, torch.tensor(2.0)), rtol=0, atol=0
    )  # a float scale works


def test_bad_tokenizer_and_config_input():
    with pytest.raises(ValueError, match=r"words must be non-empty strings without spaces, got \['', 'a b'\]"):
        bpe_merges(['ok', '', 'a b'])
    with pytest.raises(TypeError, match='captions must be a list of strings'):
        make_glyph_tokenizer(captions='a capital A')
    with pytest.raises(ValueError, match='max_length .* must be an integer >= 3, got 2'):
        make_glyph_tokenizer(captions=CAPTIONS, max_length=2)
    with pytest.raises(ValueError, match='text_hidden must be a multiple of heads=4, got 30'):
        tiny_clip_config(50, text_hidden=30)
    with pytest.raises(ValueError, match='image_size must be a multiple of patch_size=5, got 16'):
        tiny_clip_config(50, patch_size=5)
    with pytest.raises(ValueError, match='vocab_size must be an integer >= 2, got 0'):
        tiny_clip_config(0)
