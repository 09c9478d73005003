"""Train the tiny CLIP of lesson 08b on the glyph captions with the course's training loop, and ship it.

    .venv/bin/python tools/weights/glyph_clip.py          # CPU: about 40 minutes (the shipped run took 2291 s)
    accelerate launch tools/weights/glyph_clip.py         # the same run on a GPU

Writes diffcourse/weights/glyph_clip.safetensors: the CLIPModel weights, and in the metadata its CLIPConfig,
the tokenizer's vocabulary and merges, the held-out retrieval accuracies and this command.
(No resumable checkpoint: the loop's checkpoints want a dict config, a CLIPModel has a CLIPConfig.)
"""

import argparse, os, time
import torch
from transformers import CLIPModel
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader, load_glyphs, GLYPH_CHARS
from diffcourse.training import train
from diffcourse.clip import (
    make_glyph_tokenizer,
    tiny_clip_config,
    clip_loss_fn,
    save_glyph_clip,
    clip_similarity,
    retrieval_accuracy,
    char_prompt,
    GLYPH_CLIP,
)

COMMAND = '.venv/bin/python tools/weights/glyph_clip.py'


def main(steps=3000, batch_size=128, lr=2e-3, p_drop=0.5, out=None):
    seed_everything(0)
    tok = make_glyph_tokenizer()
    model = CLIPModel(tiny_clip_config(len(tok)))
    dl = get_dataloader(
        'glyphs', batch_size=batch_size, captions=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    t0 = time.time()
    st = train(
        model,
        clip_loss_fn(tok, p_drop, generator=torch.Generator().manual_seed(1)),
        dl,
        steps,
        lr,
        warmup=100,
        weight_decay=0.05,
        ema_decay=0.999,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    clip = st.ema.cpu().eval()
    test = load_glyphs('test')
    texts = sorted(set(test.captions))
    acc = retrieval_accuracy(clip_similarity(clip, tok, test.images, texts), test.captions, texts)
    zs = clip_similarity(clip, tok, test.images, [char_prompt(c) for c in GLYPH_CHARS]).argmax(1)
    acc['zero-shot'] = (zs == test.labels).float().mean().item()
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s, mean loss of the last 200 steps {final:.4f}, held-out {acc}')
    path = save_glyph_clip(
        clip,
        tok,
        out or weights_path(GLYPH_CLIP, must_exist=False),
        dataset='glyphs train split (3162 images, 16x16, [-1, 1]) with captions',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        p_drop=p_drop,
        ema_decay=0.999,
        final_loss=round(final, 4),
        held_out={k: round(v, 4) for k, v in acc.items()},
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=3000)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--p-drop', type=float, default=0.5)
    p.add_argument('--out', default=None)
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.p_drop, a.out)
