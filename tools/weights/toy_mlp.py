"""Train lesson 04's ToyMLP on a 2-D toy with the course's DDPM loop and ship its EMA weights.

    .venv/bin/python tools/weights/toy_mlp.py --toy gaussian_mixture    # CPU, one thread: a few minutes
    accelerate launch tools/weights/toy_mlp.py --toy gaussian_mixture   # the same run on a GPU or several

writes diffcourse/weights/toy_mlp_<toy>.safetensors (eps-prediction, linear schedule, T = 1000).
"""

import argparse, os, time
from diffcourse.core import seed_everything, weights_path
from diffcourse.data import get_dataloader
from diffcourse.schedules import Schedule
from diffcourse.training import ToyMLP, train, ddpm_loss, save_pretrained

CONFIG = dict(dim=2, hidden=128, depth=3, temb_dim=32)


def main(toy='gaussian_mixture', steps=6000, batch_size=512, lr=2e-3, n=20_000, out=None, ckpt=None):
    g = seed_everything(0)
    dl = get_dataloader(toy, batch_size=batch_size, generator=g, n=n, seed=0, drop_last=True)
    schedule = Schedule.from_name('linear', T=1000)
    model = ToyMLP(**CONFIG)
    t0 = time.time()
    st = train(
        model,
        lambda m, b: ddpm_loss(m, b[0], schedule, 'eps'),
        dl,
        steps,
        lr,
        warmup=100,
        ema_decay=0.999,
        ckpt=ckpt,
        ckpt_every=1000 if ckpt else None,
        seed=0,
    )
    if not st.accelerator.is_main_process:
        return
    final = sum(st.losses[-500:]) / len(st.losses[-500:])
    print(f'{st.step} steps in {time.time() - t0:.0f}s, mean loss of the last 500 steps {final:.4f}')
    path = save_pretrained(
        st.ema,
        out or weights_path(f'toy_mlp_{toy}.safetensors', must_exist=False),
        dataset=f'{toy} (2-D toy, {n} points, seed 0)',
        toy=toy,
        schedule='linear',
        T=1000,
        objective='eps',
        steps=st.step,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.999,
        final_loss=round(final, 5),
        command=f'.venv/bin/python tools/weights/toy_mlp.py --toy {toy}',
    )
    print('wrote', path, f'{os.path.getsize(path) / 1e6:.2f} MB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--toy', default='gaussian_mixture')
    p.add_argument('--steps', type=int, default=6000)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--out', default=None)
    p.add_argument('--ckpt', default=None)
    a = p.parse_args()
    main(a.toy, a.steps, a.batch_size, a.lr, out=a.out, ckpt=a.ckpt)
