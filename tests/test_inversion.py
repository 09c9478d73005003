"Lesson 09b: textual inversion on tiny random parts: only the new row learns, and diffusers reads the saved word."

import warnings

import pytest
import torch
from safetensors.torch import save_file

from diffcourse.latent import (
    SDParts,
    glyph_vae,
    glyph_unet,
    glyph_scheduler,
    to_pipeline,
    save_parts,
    load_parts,
    text_to_image,
)
from diffcourse.inversion import add_token, insert_token, learn_token, save_token, load_token, ink_radius
from diffcourse.clip import make_glyph_tokenizer, tiny_clip_config

warnings.filterwarnings('ignore', message='.*safety checker.*')


def tiny_parts():
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tok = make_glyph_tokenizer()
    te = CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config).eval()
    vae = glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8).eval()
    return SDParts(
        tok, te, glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8).eval(), vae, glyph_scheduler()
    )


def test_insert_and_add_token():
    p = tiny_parts()
    assert insert_token('an italic mono lowercase g', '<s>') == 'an <s> italic mono lowercase g'
    n = len(p.tokenizer)
    tid = add_token(p.tokenizer, p.text_encoder, '<s>', torch.ones(32))
    assert tid == n and p.tokenizer.tokenize('a <s> capital A')[1] == '<s>'
    assert torch.equal(p.text_encoder.get_input_embeddings().weight[tid], torch.ones(32))
    with pytest.raises(ValueError, match='already in the vocabulary'):
        add_token(p.tokenizer, p.text_encoder, '<s>')


def test_learn_token_changes_only_the_new_row():
    p = tiny_parts()
    before = p.text_encoder.get_input_embeddings().weight.detach().clone()
    frozen = {k: v.clone() for k, v in p.unet.state_dict().items()}
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    v, st = learn_token(p, images, ['a <s> capital A'] * 8, '<s>', steps=5, lr=1e-2, batch_size=4, progress=False)
    after = p.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(before)], before)
    assert not torch.equal(after[-1], after[: len(before)].mean(0)) and torch.equal(after[-1], v)
    assert all(torch.equal(frozen[k], t) for k, t in p.unet.state_dict().items())
    with pytest.raises(ValueError, match="must contain the token"):
        learn_token(p, images, ['a capital A'] * 8, '<t>', steps=1)


def test_saved_word_loads_into_diffusers(tmp_path):
    p = tiny_parts()
    folder = save_parts(p, tmp_path / 'sd')
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    path = save_token(tmp_path / 'word.safetensors', '<s>', v)
    ours = load_parts(folder, local_files_only=True)
    assert load_token(ours, path) == '<s>'
    pipe = to_pipeline(load_parts(folder, local_files_only=True))
    pipe.load_textual_inversion(str(path))
    prompts = ['a <s> bold capital A', 'a <s> digit 3']
    ref = pipe(
        prompts, num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type='pt'
    ).images
    out = text_to_image(ours, prompts, steps=3, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    # the same modules and float32 operations in the same order; the [-1, 1] -> [0, 1] map is one rounding of values
    # <= 1 (6e-8): 1e-5 allowed
    torch.testing.assert_close(out / 2 + 0.5, ref, atol=1e-5, rtol=0)


def test_ink_radius():
    x = -torch.ones(2, 1, 16, 16)
    x[0, 0, 7:9, 7:9] = 1
    x[1, 0, 4:12, 4:12] = 1
    r = ink_radius(x)
    # a 2x2 block: every pixel 1/sqrt(2) from the centre; sums of 0/1 weights and quarter-integers are exact in float32,
    # then one division and a square root: two roundings of 0.7, 1.7e-7; 1e-6 allowed
    torch.testing.assert_close(r[0], torch.tensor(0.5**0.5), rtol=0, atol=1e-6)
    assert r[1] > 2 * r[0]
    with pytest.raises(ValueError, match=r'images must be \(B, 1, H, W\), got \(2, 3, 16, 16\)'):
        ink_radius(torch.zeros(2, 3, 16, 16))


# ---- a new token never shadows what the tokenizer already reads ----


@pytest.mark.parametrize(
    'token, error',
    [
        ('capital', "already in the vocabulary (as 'capital</w>')"),  # the word, without its end-of-word mark
        ('Capital', "already in the vocabulary (as 'capital</w>')"),  # CLIP lower-cases prompts, and added tokens
        ('capital</w>', "already in the vocabulary (as 'capital</w>')"),
        ('ca', "already in the vocabulary (as 'ca')"),  # a BPE piece
        ('apit', "would shadow words the tokenizer knows: it is read as 'apit', which is part of ['capital</w>']"),
        ('<|start', "would shadow words"),  # part of the start token's text
        ('a', "already in the vocabulary (as 'a')"),
        ('ld se', 'must be a non-empty string without spaces'),
        ('', 'must be a non-empty string without spaces'),
    ],
)
def test_add_token_refuses_what_the_tokenizer_already_reads(token, error):
    p = tiny_parts()
    n, before = len(p.tokenizer), p.tokenizer.tokenize('a bold serif capital A')
    with pytest.raises(ValueError) as e:
        add_token(p.tokenizer, p.text_encoder, token)
    assert error in str(e.value), str(e.value)
    assert len(p.tokenizer) == n and p.text_encoder.get_input_embeddings().weight.shape[0] == n  # nothing was added
    assert p.tokenizer.tokenize('a bold serif capital A') == before


def test_a_safe_token_changes_no_other_prompt():
    p = tiny_parts()
    prompts = ['a bold serif capital A', 'an italic mono lowercase g', 'a sans digit 7', 'a zebra']
    before = [p.tokenizer.tokenize(t) for t in prompts]
    add_token(p.tokenizer, p.text_encoder, '<tiny>')
    assert [p.tokenizer.tokenize(t) for t in prompts] == before
    with pytest.raises(ValueError, match=r"init must be a \(32,\) embedding"):
        add_token(p.tokenizer, p.text_encoder, '<b>', torch.ones(3))


def test_crafted_token_files_are_refused(tmp_path):
    p = tiny_parts()
    cases = [
        ({'<s>': torch.zeros(32)}, {'format': 'diffcourse.weights/1'}, 'is not a textual-inversion file'),
        ({'<s>': torch.zeros(32), '<t>': torch.zeros(32)}, None, 'holds one tensor keyed by its token'),
        ({'<s>': torch.zeros(31)}, None, 'this text encoder wants (32,) finite floats'),
        ({'<s>': torch.full((32,), float('nan'))}, None, 'finite floats'),
        ({'<s>': torch.zeros(32, dtype=torch.int32)}, None, 'finite floats'),
        ({'serif': torch.zeros(32)}, None, "token 'serif' is already in the vocabulary"),
        ({'a b': torch.zeros(32)}, None, 'must be a non-empty string without spaces'),
    ]
    for tensors, meta, error in cases:
        save_file(tensors, str(tmp_path / 't.safetensors'), metadata=meta)
        n = len(p.tokenizer)
        with pytest.raises(ValueError) as e:
            load_token(p, tmp_path / 't.safetensors')
        assert error in str(e.value) and len(p.tokenizer) == n, (error, str(e.value))
    assert sorted(f.name for f in tmp_path.iterdir()) == ['t.safetensors']


def test_bad_inversion_input(tmp_path):
    p = tiny_parts()
    images = torch.zeros(4, 1, 16, 16)
    with pytest.raises(ValueError, match='steps must be an integer >= 1, got 0'):
        learn_token(p, images, ['a <s> capital A'] * 4, '<s>', steps=0)
    with pytest.raises(ValueError, match='lr must be a finite number > 0'):
        learn_token(p, images, ['a <s> capital A'] * 4, '<s>', lr=-1)
    with pytest.raises(ValueError, match='with one caption each'):
        learn_token(p, images, ['a <s> capital A'] * 3, '<s>', steps=1)
    with pytest.raises(ValueError, match="'capital' is already in the vocabulary"):
        learn_token(p, images, ['a capital A'] * 4, 'capital', steps=1)
    assert len(p.tokenizer) == len(tiny_parts().tokenizer)  # the refused token was not added
    with pytest.raises(ValueError, match="caption must be an article and words"):
        insert_token('A', '<s>')
    with pytest.raises(ValueError, match='token must be a non-empty string without spaces'):
        save_token(tmp_path / 'x.safetensors', 'a b', torch.zeros(3))
    with pytest.raises(ValueError, match=r'embedding must be a \(D,\) float tensor'):
        save_token(tmp_path / 'x.safetensors', '<s>', torch.zeros(2, 3))


def test_learn_token_reuses_a_token_it_added():
    p = tiny_parts()
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    v1, _ = learn_token(p, images, ['a <s> capital A'] * 4, '<s>', steps=1, batch_size=4, progress=False)
    n = len(p.tokenizer)
    v2, _ = learn_token(p, images, ['a <s> capital A'] * 4, '<s>', steps=1, batch_size=4, progress=False)
    assert len(p.tokenizer) == n and v1.shape == v2.shape == (32,)
