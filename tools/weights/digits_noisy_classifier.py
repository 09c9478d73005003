"""Train the noise-aware digits classifier of lesson 08 (classifier guidance) with the course's loop, and ship it.

    .venv/bin/python tools/weights/digits_noisy_classifier.py     # CPU, one thread: about 5-10 minutes
    accelerate launch tools/weights/digits_noisy_classifier.py    # the same run on a GPU

It reads x_t ~ q(x_t | x0) of the linear schedule with T = 1000 (that of digits_unet) and the timestep t.
"""

import argparse, os, time
import torch
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader, load_digits
from diffcourse.schedules import Schedule, q_sample
from diffcourse.training import train, save_pretrained
from diffcourse.guidance import NoisyClassifier, noisy_classifier_loss

COMMAND = '.venv/bin/python tools/weights/digits_noisy_classifier.py'


def main(steps=3000, batch_size=64, lr=2e-3, out=None, ckpt='runs/digits_noisy_classifier.ckpt.safetensors'):
    seed_everything(0)
    schedule = Schedule.from_name('linear', T=1000)
    dl = get_dataloader(
        'digits', batch_size=batch_size, split='train', drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    model = NoisyClassifier(num_classes=10)
    t0 = time.time()
    g = torch.Generator().manual_seed(1)  # the loss's t and eps; train checkpoints its state with the run
    st = train(
        model,
        noisy_classifier_loss(schedule, g),
        dl,
        steps,
        lr,
        warmup=100,
        weight_decay=1e-4,
        ema_decay=0.999,
        ckpt=ckpt,
        ckpt_every=500,
        seed=0,
        generator=g,
    )
    if not st.accelerator.is_main_process:
        return
    clf = st.ema.cpu().eval()
    x, y = load_digits('test')
    accs = {}
    with torch.no_grad():
        for t in (0, 250, 500, 750):
            x_t = q_sample(x, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(t)), schedule.abar)
            accs[t] = round((clf(x_t, torch.full((len(x),), t)).argmax(1) == y).float().mean().item(), 4)
    final = sum(st.losses[-200:]) / len(st.losses[-200:])
    print(
        f'{st.step} steps in {time.time() - t0:.0f}s, mean loss of the last 200 steps {final:.4f},'
        f' held-out accuracy by t {accs}'
    )
    path = save_pretrained(
        clf,
        out or weights_path('digits_noisy_classifier.safetensors', must_exist=False),
        dataset='digits train split (1437 images), 16x16, [-1, 1], noised by q(x_t | x0)',
        schedule='linear',
        T=1000,
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.999,
        final_loss=round(final, 5),
        held_out_accuracy_by_t=accs,
        command=COMMAND,
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=3000)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default='runs/digits_noisy_classifier.ckpt.safetensors')
    a = p.parse_args()
    main(a.steps, a.batch_size, a.lr, a.out, a.ckpt)
