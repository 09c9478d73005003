"""Learn the word `<tiny>` for the glyph Stable Diffusion by textual inversion (lesson 09b) and ship it.

    .venv/bin/python tools/weights/glyph_tiny_token.py   # after glyph_vae.py and glyph_sd.py; CPU, one thread: minutes

The concept is the training glyphs drawn smallest (font size em < 0.66 of the image side), which no caption names.
Only the new token's embedding row is trained (`diffcourse.inversion.learn_token`, the course's loop); everything
else is frozen. Writes diffcourse/weights/glyph_tiny_token.safetensors in diffusers' textual-inversion format
({'<tiny>': (64,) embedding}), with the ink radii measured below and this command in the metadata.
"""

import argparse, os, time
import torch
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import load_glyphs, GLYPH_CHARS
from diffcourse.clip import char_prompt
from diffcourse.latent import load_glyph_sd, text_to_image
from diffcourse.inversion import learn_token, insert_token, ink_radius, save_token, GLYPH_TINY

COMMAND = '.venv/bin/python tools/weights/glyph_tiny_token.py'
TOKEN, EM_MAX = '<tiny>', 0.66


def main(steps=1000, lr=5e-3, batch_size=32, sd=None, vae=None, out=None):
    seed_everything(0)
    parts = load_glyph_sd(sd, vae)
    g = load_glyphs('train')
    tiny = [i for i, a in enumerate(g.attrs) if a['em'] < EM_MAX]
    t0 = time.time()
    v, st = learn_token(
        parts, g.images[tiny], [insert_token(g.captions[i], TOKEN) for i in tiny], TOKEN, steps, lr, batch_size
    )
    final = sum(st.losses[-100:]) / len(st.losses[-100:])
    chars = [c for c in GLYPH_CHARS for _ in range(4)]
    r = {}
    for name, prompts in (
        ('with', [insert_token(char_prompt(c), TOKEN) for c in chars]),
        ('without', [char_prompt(c) for c in chars]),
    ):
        x = text_to_image(parts, prompts, steps=25, guidance_scale=4.0, generator=torch.Generator().manual_seed(1))
        r[name] = round(ink_radius(x).mean().item(), 4)
    r['real_tiny'] = round(ink_radius(g.images[tiny]).mean().item(), 4)
    r['real_all'] = round(ink_radius(g.images).mean().item(), 4)
    print(f'{st.step} steps in {time.time() - t0:.0f}s; last-100 loss {final:.4f}; mean ink radius {r}')
    path = save_token(
        out or weights_path(GLYPH_TINY, must_exist=False),
        TOKEN,
        v,
        concept=f'glyphs drawn with em < {EM_MAX}',
        images=len(tiny),
        steps=st.step,
        lr=lr,
        batch_size=batch_size,
        final_loss=round(final, 5),
        ink_radius=r,
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e3:.1f} kB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--lr', type=float, default=5e-3)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--sd', default=None, help='glyph SD file (default: the shipped one)')
    p.add_argument('--vae', default=None)
    p.add_argument('--out', default=None)
    a = p.parse_args()
    main(a.steps, a.lr, a.batch_size, a.sd, a.vae, a.out)
