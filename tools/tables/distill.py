"""Compute lesson 10's table, sample quality against sampling steps for the teacher's DDIM and the distilled students,
and ship it as JSON.

    .venv/bin/python tools/tables/distill.py                    # both tables (CPU, one thread: about half an hour)
    .venv/bin/python tools/tables/distill.py --tables toy       # the 2-D mixture alone: seconds
    .venv/bin/python tools/tables/distill.py --device cuda      # the same on a GPU
    .venv/bin/python tools/tables/distill.py --joint            # lesson 10b's table: 3 seeds, training costs

Every row is computed by `diffcourse.tables.distill_table` from the shipped weights, the very function lesson 10
uses for the rows it recomputes live. Most of the time goes to the digits teacher at 256 and 128 steps on 500 images.
Every row records the sha256 (first 12 hex digits) of the weights file it measured, and the lesson checks that each
one still matches the shipped file (`diffcourse.tables.stale_rows`). Finished rows are kept in
runs/distill_table.partial.json under a key that includes that hash, so a rerun skips them unless their weights
changed; the table diffcourse/weights/distill_table.json is written (atomically) once every row of the requested
tables is done.
"""

import argparse, json, time
from pathlib import Path

import torch

from diffcourse.tables import DISTILL_SETUPS, DISTILL_TABLE_PATH, DISTILL_ROWS, distill_table, row_name, weights_id
from diffcourse.tables import CONSISTENCY_TABLE_PATH, JOINT_ROWS, JOINT_SEEDS, joint_rows
from samplers import read_tables, run_stamp, write_json  # tools/tables/samplers.py

COMMAND = '.venv/bin/python tools/tables/distill.py'


def _key(table, method, steps, seed):
    return f'{table}/{method}/{steps}/seed{seed}/{weights_id(row_name(table, method, steps))}'


def measure(tables, rows, seeds, device, partial: Path) -> dict:
    "Every (table, row, seed) not yet in the partial file, measured and added to it; the partial results."
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    for table in tables:
        for method, steps in rows:
            for seed in seeds:
                key = _key(table, method, steps, seed)
                if key in done:
                    continue
                t0 = time.time()
                (row,) = distill_table(table, rows=((method, steps),), seed=seed, device=device, progress=False)
                assert key.endswith(row['weights']), (key, row)
                done[key] = row
                write_json(done, partial)
                took = time.time() - t0
                print(
                    f'{table:6} {method:24} {steps:4} steps seed {seed}: {row["value"]:.4f}  [{took:.0f}s]', flush=True
                )
    return done


def _seconds_per_step(losses: dict, nets: dict, k: int = 20) -> dict:
    """Wall seconds of one optimizer step (loss, backward, AdamW) of each method: the methods take turns, one step each
    per round, so that a change in the machine's load falls on all of them; the median of k rounds after two."""
    opts = {m: torch.optim.AdamW(nets[m].parameters(), lr=1e-6) for m in losses}
    times = {m: [] for m in losses}
    for _ in range(k + 2):
        for m, loss in losses.items():
            t0 = time.perf_counter()
            opts[m].zero_grad()
            loss(nets[m]).backward()
            opts[m].step()
            times[m].append(time.perf_counter() - t0)
    return {m: sorted(t[2:])[k // 2] for m, t in times.items()}


def train_costs(table: str, device='cpu') -> dict:
    """Per few-step method: the teacher's network evaluations its training spends, its optimizer steps, and CPU seconds
    estimated as optimizer steps x the seconds of one step timed here on one thread (plus, for the direct student, the
    time of sampling its pairs), all in this one run and on this machine, so that the methods compare; and the seconds
    that consistency runs recorded when they were made."""
    import copy
    from diffcourse.artifacts import ARTIFACTS, describe
    from diffcourse.consistency import consistency_loss
    from diffcourse.distill import direct_loss, distill_loss, distill_sigmas, teacher_pairs
    from diffcourse.samplers import Denoiser, load_denoiser

    cmp = DISTILL_SETUPS[table]
    torch.set_num_threads(1)  # every step timed on one thread, as the consistency runs were made
    teacher = load_denoiser(cmp['teacher'], device)
    sched = teacher.schedule
    chain = [a for n, a in ARTIFACTS.items() if a.recipe == 'progressive' and n.startswith(cmp['teacher'] + '_pd')]
    direct, cd, ct = (ARTIFACTS[f"{cmp['teacher']}_{tag}"] for tag in ('direct1', 'cd', 'ct'))
    g = torch.Generator(device).manual_seed(0)
    batch = lambda a: torch.randn((a.args['batch_size'], *cmp['shape']), generator=g, device=device)
    D = lambda net: Denoiser(net, sched, 'v')
    grid = distill_sigmas(sched, 64).to(device)
    fresh = lambda: copy.deepcopy(teacher.net).train().requires_grad_(True)
    x_pd, x_d, x_cd, x_ct = batch(chain[0]), batch(direct), batch(cd), batch(ct)
    losses = dict(
        progressive=lambda net: distill_loss(D(net), teacher, x_pd, 4),
        direct=lambda net: direct_loss(D(net), x_d, x_d),
        consistency_distillation=lambda net: consistency_loss(D(net), D(net), x_cd, grid, teacher),
        consistency_training=lambda net: consistency_loss(D(net), D(net), x_ct, grid, None, weighting='inverse_gap'),
    )
    per_step = _seconds_per_step(losses, {m: fresh() for m in losses})
    t0 = time.perf_counter()
    m = 64
    teacher_pairs(teacher, (m, *cmp['shape']), direct.args['teacher_steps'], g, batch_size=m)
    pairs_seconds = (time.perf_counter() - t0) * direct.args['pairs'] / m
    steps = dict(
        progressive=sum(a.args['steps'] for a in chain),
        direct=direct.args['steps'],
        consistency_distillation=cd.args['steps'],
        consistency_training=ct.args['steps'],
    )
    evals = dict(
        progressive=sum(2 * a.args['batch_size'] * a.args['steps'] for a in chain),  # two teacher steps per sample
        direct=direct.args['pairs'] * direct.args['teacher_steps'],  # its pairs, sampled once
        consistency_distillation=cd.args['batch_size'] * cd.args['steps'],  # one teacher step per sample
        consistency_training=0,
    )
    out = {}
    for method in steps:
        extra = pairs_seconds if method == 'direct' else 0.0
        seconds = round(steps[method] * per_step[method] + extra, 1)
        out[method] = dict(teacher_evals=evals[method], optimizer_steps=steps[method], seconds=seconds)
        out[method]['seconds_per_step'] = round(per_step[method], 4)
    for method, a in (('consistency_distillation', cd), ('consistency_training', ct)):
        out[method]['recorded_seconds'] = describe(a.name).get('train_seconds')
    return out


def main_joint(
    tables, seeds=JOINT_SEEDS, device='cpu', out=CONSISTENCY_TABLE_PATH, partial='runs/distill_table.partial.json'
):
    "Lesson 10b's table: JOINT_ROWS from each seed, and the training cost of each method."
    done = measure(tables, JOINT_ROWS, seeds, device, Path(partial))
    result = read_tables(out, f'{COMMAND} --joint')
    stamp = run_stamp(device, list(seeds))
    for t in tables:
        cmp = DISTILL_SETUPS[t]
        per_seed = [[done[_key(t, m, s, seed)] for m, s in JOINT_ROWS] for seed in seeds]
        rows = joint_rows(per_seed, seeds)
        result['tables'][t] = dict(teacher=cmp['teacher'], label=cmp['label'], n=cmp['n'], **stamp, rows=rows)
        result['tables'][t]['costs'] = train_costs(t, device)
    write_json(result, out)
    print('wrote', out)


def main(
    tables=tuple(DISTILL_SETUPS),
    seed=0,
    device='cpu',
    out=DISTILL_TABLE_PATH,
    partial='runs/distill_table.partial.json',
):
    done = measure(tables, DISTILL_ROWS, (seed,), device, Path(partial))
    result = read_tables(out, COMMAND)
    stamp = run_stamp(device, seed)
    for t in tables:
        cmp = DISTILL_SETUPS[t]
        result['tables'][t] = dict(
            teacher=cmp['teacher'],
            label=cmp['label'],
            n=cmp['n'],
            **stamp,
            rows=[done[f'{t}/{m}/{s}/seed{seed}/{weights_id(row_name(t, m, s))}'] for m, s in DISTILL_ROWS],
        )
    write_json(result, out)
    print('wrote', out)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tables', nargs='+', default=list(DISTILL_SETUPS), choices=list(DISTILL_SETUPS))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=str(DISTILL_TABLE_PATH))
    p.add_argument('--partial', default='runs/distill_table.partial.json')
    p.add_argument('--joint', action='store_true', help="lesson 10b's table (seeds 0, 1, 2) in consistency_table.json")
    a = p.parse_args()
    if a.joint:
        main_joint(
            tuple(a.tables),
            JOINT_SEEDS,
            a.device,
            a.out if a.out != str(DISTILL_TABLE_PATH) else CONSISTENCY_TABLE_PATH,
            a.partial,
        )
    else:
        main(tuple(a.tables), a.seed, a.device, a.out, a.partial)
