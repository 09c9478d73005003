"""Compute lesson 07's table, sample quality against network evaluations for every sampler, and ship it as JSON.

    .venv/bin/python tools/tables/samplers.py                      # every sampler at every budget, seeds 0 1 2
    .venv/bin/python tools/tables/samplers.py --tables toy         # the 2-D toy alone: minutes on one CPU
    .venv/bin/python tools/tables/samplers.py --evals 250 100 50 20 10 5     # some budgets now, the rest later
    .venv/bin/python tools/tables/samplers.py --evals 1000 --samplers ddpm   # one sampler at one budget

The shipped table is the toy at every budget, and digits at 250 ... 5 evaluations for every sampler and at 1000
for DDPM alone (the three commands lesson 07 lists): the other samplers' 1000-evaluation digits cells would cost
about as much again as the whole table and, from 50 evaluations on, they no longer change.
    .venv/bin/python tools/tables/samplers.py --device cuda        # the same on a GPU

Every cell is computed by `diffcourse.tables.sampler_table` on the set-ups of `diffcourse.tables.SAMPLER_SETUPS`,
the very functions lesson 07 uses for the slice it recomputes live, once from the noise of each seed of --seeds
(default `TABLE_SEEDS`); the shipped row of a cell holds every seed's value, their mean and standard error
(`joint_rows`). Most of the time goes to the digits U-Net: a few milliseconds per image per network evaluation on
one CPU thread, so a 1000-evaluation cell of 500 images takes 10 to 30 minutes, depending on the CPU. Finished
cells are kept in runs/sampler_table.partial.json (keyed by table, weights hash, sampler, budget, seed and number
of samples) and skipped when the script is rerun, so an interrupted run resumes and a run with other --evals or
--samplers adds to the table. diffcourse/weights/sampler_table.json is rewritten (atomically) at the end of each
run: a table computed now holds every cell that all the seeds have finished, in this run or earlier ones, for the
same weights and sample size; tables not computed are kept as they were.
"""

import argparse, datetime, json, platform, time
from pathlib import Path
import torch
from diffcourse.core import write_atomic
from diffcourse.samplers import SAMPLERS
from diffcourse.tables import TABLE_EVALS, SAMPLER_TABLE_PATH, SAMPLER_SETUPS, table_setup, sampler_table, weights_id
from diffcourse.tables import TABLE_SEEDS, joint_rows

COMMAND = '.venv/bin/python tools/tables/samplers.py'


def write_json(obj, path):
    "Write `obj` as JSON to `path` atomically (core.write_atomic: an interrupted run never leaves half a file)."
    write_atomic(path, (json.dumps(obj, indent=1) + '\n').encode())


def read_tables(path, command):
    "The shipped table file at `path`, or an empty one that records `command`."
    return json.loads(Path(path).read_text()) if Path(path).is_file() else dict(command=command, tables={})


def run_stamp(device, seed) -> dict:
    "When, where and with what a table was computed."
    return dict(
        created=datetime.datetime.now().isoformat(timespec='seconds'),
        torch=torch.__version__,
        device=str(device),
        machine=platform.machine(),
        seed=seed,
    )


def main(
    tables=tuple(SAMPLER_SETUPS),
    evals=TABLE_EVALS,
    names=tuple(SAMPLERS),
    seeds=TABLE_SEEDS,
    device='cpu',
    threads=None,
    out=SAMPLER_TABLE_PATH,
    partial='runs/sampler_table.partial.json',
    n=None,
):
    if threads:
        torch.set_num_threads(threads)
    partial = Path(partial)
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    for table in tables:
        setup = SAMPLER_SETUPS[table]
        model, metric = table_setup(table, device)
        shape, wid = (n or setup['n'], *setup['shape']), weights_id(setup['model'])
        for seed in seeds:
            for name in names:
                for e in evals:
                    key = f'{table}/{wid}/{name}/{e}/seed{seed}/n{shape[0]}'
                    if key in done:
                        continue
                    t0 = time.time()
                    (row,) = sampler_table(model, metric, shape, evals=(e,), names=(name,), seed=seed, progress=False)
                    done[key] = row
                    write_json(done, partial)
                    print(
                        f'{table:6} {name:9} {row["evals"]:5} evals ({row["steps"]:4} steps) seed {seed}: '
                        f'{row["value"]:.4f}  [{time.time() - t0:.0f}s]',
                        flush=True,
                    )
    # update only the tables computed here, keeping the others of an existing file
    result = read_tables(out, COMMAND)
    stamp = run_stamp(device, list(seeds))
    order = {name: i for i, name in enumerate(SAMPLERS)}
    for t in tables:
        s, nt = SAMPLER_SETUPS[t], n or SAMPLER_SETUPS[t]['n']
        wid = weights_id(s['model'])
        # every cell of this table, weights and size that every seed has finished: also those of earlier runs
        per_seed = [
            {(r['sampler'], r['budget']): r for k, r in done.items() if k.startswith(f'{t}/{wid}/') and
             k.endswith(f'/seed{seed}/n{nt}')} for seed in seeds
        ]  # fmt: skip
        cells = sorted(set.intersection(*map(set, per_seed)), key=lambda k: (order[k[0]], -k[1]))
        rows = joint_rows([[p[k] for k in cells] for p in per_seed], seeds)
        result['tables'][t] = dict(model=s['model'], weights_sha256=wid, label=s['label'], n=nt, **stamp, rows=rows)
    write_json(result, out)
    print('wrote', out)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tables', nargs='+', default=list(SAMPLER_SETUPS), choices=list(SAMPLER_SETUPS))
    p.add_argument('--evals', nargs='+', type=int, default=list(TABLE_EVALS))
    p.add_argument('--samplers', nargs='+', default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument(
        '--n', type=int, default=None, help='samples per cell (default: SAMPLER_SETUPS, 500 digits / 2000 toy points)'
    )
    p.add_argument('--seeds', nargs='+', type=int, default=list(TABLE_SEEDS), help='every cell from each seed\'s noise')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    p.add_argument('--out', default=str(SAMPLER_TABLE_PATH))
    p.add_argument('--partial', default='runs/sampler_table.partial.json')
    a = p.parse_args()
    main(tuple(a.tables), tuple(a.evals), tuple(a.samplers), tuple(a.seeds), a.device, a.threads, a.out, a.partial, a.n)
