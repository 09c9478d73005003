"Lesson 09b: textual inversion on tiny random parts: only the new row learns, and diffusers reads the saved word."
import warnings

import pytest
import torch

from diffcourse.latent import SDParts, glyph_vae, glyph_unet, glyph_scheduler, to_pipeline, save_parts, load_parts, text_to_image
from diffcourse.inversion import add_token, insert_token, learn_token, save_token, load_token, ink_radius
from diffcourse.clip import make_glyph_tokenizer, tiny_clip_config

warnings.filterwarnings('ignore', message='.*safety checker.*')


def tiny_parts():
    from transformers import CLIPTextModel
    torch.manual_seed(0)
    tok = make_glyph_tokenizer()
    te = CLIPTextModel(tiny_clip_config(len(tok), text_hidden=32, text_layers=1).text_config).eval()
    vae = glyph_vae(block_out_channels=(16, 16, 16), norm_num_groups=8).eval()
    return SDParts(tok, te, glyph_unet(32, block_out_channels=(16, 32), norm_num_groups=8).eval(), vae, glyph_scheduler())


def test_insert_and_add_token():
    p = tiny_parts()
    assert insert_token('an italic mono lowercase g', '<s>') == 'an <s> italic mono lowercase g'
    n = len(p.tokenizer)
    tid = add_token(p.tokenizer, p.text_encoder, '<s>', torch.ones(32))
    assert tid == n and p.tokenizer.tokenize('a <s> capital A')[1] == '<s>'
    assert torch.equal(p.text_encoder.get_input_embeddings().weight[tid], torch.ones(32))
    with pytest.raises(ValueError, match='already in the vocabulary'): add_token(p.tokenizer, p.text_encoder, '<s>')


def test_learn_token_changes_only_the_new_row():
    p = tiny_parts()
    before = p.text_encoder.get_input_embeddings().weight.detach().clone()
    frozen = {k: v.clone() for k, v in p.unet.state_dict().items()}
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    v, st = learn_token(p, images, ['a <s> capital A'] * 8, '<s>', steps=5, lr=1e-2, batch_size=4, progress=False)
    after = p.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[:len(before)], before)
    assert not torch.equal(after[-1], after[:len(before)].mean(0)) and torch.equal(after[-1], v)
    assert all(torch.equal(frozen[k], t) for k, t in p.unet.state_dict().items())
    with pytest.raises(ValueError, match="must contain the token"): learn_token(p, images, ['a capital A'] * 8, '<t>', steps=1)


def test_saved_word_loads_into_diffusers(tmp_path):
    p = tiny_parts()
    folder = save_parts(p, tmp_path/'sd')
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    path = save_token(tmp_path/'word.safetensors', '<s>', v)
    ours = load_parts(folder, local_files_only=True)
    assert load_token(ours, path) == '<s>'
    pipe = to_pipeline(load_parts(folder, local_files_only=True))
    pipe.load_textual_inversion(str(path))
    prompts = ['a <s> bold capital A', 'a <s> digit 3']
    ref = pipe(prompts, num_inference_steps=3, guidance_scale=3., generator=torch.Generator().manual_seed(0), output_type='pt').images
    out = text_to_image(ours, prompts, steps=3, guidance_scale=3., generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out / 2 + 0.5, ref, atol=1e-5, rtol=0)


def test_ink_radius():
    x = -torch.ones(2, 1, 16, 16)
    x[0, 0, 7:9, 7:9] = 1; x[1, 0, 4:12, 4:12] = 1
    r = ink_radius(x)
    torch.testing.assert_close(r[0], torch.tensor(0.5 ** 0.5))      # a 2x2 block: every pixel 1/sqrt(2) from the centre
    assert r[1] > 2 * r[0]
