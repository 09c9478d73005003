"""Compute lesson 07's table, sample quality against network evaluations for every sampler, and ship it as JSON.

    .venv/bin/python tools/tables/samplers.py                      # everything: on one CPU, hours (see below)
    .venv/bin/python tools/tables/samplers.py --tables toy         # the 2-D toy alone: about ten minutes on one CPU
    .venv/bin/python tools/tables/samplers.py --evals 250 100 50 20 10 5     # some budgets now, the rest later
    .venv/bin/python tools/tables/samplers.py --device cuda        # the same on a GPU

Every cell is computed by `diffcourse.tables.sampler_table` on the set-ups of `diffcourse.tables.SAMPLER_SETUPS`,
the very functions lesson 07 uses for the slice it recomputes live. Most of the time goes to the digits U-Net:
about 4 ms per image per network evaluation on one CPU thread, so a 1000-evaluation cell of 500 images takes
about half an hour. Finished cells are kept in runs/sampler_table.partial.json (keyed by table, weights hash,
sampler, budget, seed and number of samples) and skipped when the script is rerun, so an interrupted run resumes
and a run with other --evals adds to the table. diffcourse/weights/sampler_table.json is rewritten (atomically)
at the end of each run: the cells computed are added to those already shipped for the same weights, seed and sample
size (cells of other weights are dropped); tables not computed are kept as they were.
"""

import argparse, datetime, json, platform, time
from pathlib import Path
import torch
from diffcourse.core import write_atomic
from diffcourse.samplers import SAMPLERS
from diffcourse.tables import TABLE_EVALS, SAMPLER_TABLE_PATH, SAMPLER_SETUPS, table_setup, sampler_table, weights_id

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
    seed=0,
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
                    f'{table:6} {name:9} {row["evals"]:5} evals ({row["steps"]:4} steps): {row["value"]:.4f}'
                    f'  [{time.time() - t0:.0f}s]',
                    flush=True,
                )
    # update only the tables computed here, keeping the others of an existing file
    result = read_tables(out, COMMAND)
    stamp = run_stamp(device, seed)
    for t in tables:
        s, nt = SAMPLER_SETUPS[t], n or SAMPLER_SETUPS[t]['n']
        wid = weights_id(s['model'])
        # every finished cell of this table, these weights, seed and size: also those of earlier runs with other --evals
        old = result['tables'].get(t, {})
        same = old.get('weights_sha256') == wid and old.get('n') == nt and old.get('seed', seed) == seed
        mine = {
            (r['sampler'], r['budget']): r for r in (old.get('rows', []) if same else [])
        }  # the shipped cells stay...
        mine.update(
            {
                (r['sampler'], r['budget']): r
                for k, r in done.items()  # ...and this run's are added
                if k.startswith(f'{t}/{wid}/') and k.endswith(f'/seed{seed}/n{nt}')
            }
        )
        order = {name: i for i, name in enumerate(SAMPLERS)}
        rows = [mine[k] for k in sorted(mine, key=lambda k: (order[k[0]], -k[1]))]
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
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    p.add_argument('--out', default=str(SAMPLER_TABLE_PATH))
    p.add_argument('--partial', default='runs/sampler_table.partial.json')
    a = p.parse_args()
    main(tuple(a.tables), tuple(a.evals), tuple(a.samplers), a.seed, a.device, a.threads, a.out, a.partial, a.n)
