"""Compute lesson 10's table, sample quality against sampling steps for the teacher's DDIM and the distilled students,
and ship it as JSON.

    .venv/bin/python tools/tables/distill.py                    # both tables (CPU, one thread: about half an hour)
    .venv/bin/python tools/tables/distill.py --tables toy       # the 2-D mixture alone: seconds
    .venv/bin/python tools/tables/distill.py --device cuda      # the same on a GPU

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
from diffcourse.tables import DISTILL_SETUPS, DISTILL_TABLE_PATH, DISTILL_ROWS, distill_table, row_name, weights_id
from samplers import read_tables, run_stamp, write_json  # tools/tables/samplers.py

COMMAND = '.venv/bin/python tools/tables/distill.py'


def main(
    tables=tuple(DISTILL_SETUPS),
    seed=0,
    device='cpu',
    out=DISTILL_TABLE_PATH,
    partial='runs/distill_table.partial.json',
):
    partial = Path(partial)
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    for table in tables:
        for method, steps in DISTILL_ROWS:
            key = f'{table}/{method}/{steps}/seed{seed}/{weights_id(row_name(table, method, steps))}'
            if key in done:
                continue
            t0 = time.time()
            (row,) = distill_table(table, rows=((method, steps),), seed=seed, device=device, progress=False)
            assert key.endswith(row['weights']), (key, row)
            done[key] = row
            write_json(done, partial)
            print(f'{table:6} {method:12} {steps:4} steps: {row["value"]:.4f}  [{time.time() - t0:.0f}s]', flush=True)
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
    a = p.parse_args()
    main(tuple(a.tables), a.seed, a.device, a.out, a.partial)
