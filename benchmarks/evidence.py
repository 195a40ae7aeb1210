"""Should I use MSLoRA rather than LoRA, Mona, BitFit, a linear probe or full
fine-tuning? The protocol of ``benchmarks/README.md`` on the real ImageNet
EfficientNet-Lite0, run as a resumable grid.

    python benchmarks/evidence.py --workers 2 --commit        # the CPU grid, committing
    python benchmarks/evidence.py --resume --workers 2 --commit   # go on (newest run file)
    python benchmarks/evidence.py --device cuda               # the GPU profile
    python benchmarks/evidence.py --quick --out /tmp/ev       # the smoke profile
    python benchmarks/evidence.py --report-only --resume      # md/png from the run file
    python benchmarks/evidence.py --tasks det --steps 800 --name evidence_cpu_det800 \
        --lrs-from evidence_cpu_2026-12-05 --workers 2 --commit   # a longer schedule
"""

import argparse
import copy
import datetime
import glob
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench import ROOT, data, env, grid, report  # noqa: E402
from bench.training import EVAL_AT  # noqa: E402

ROWS = (
    'full',
    'linear_probe',
    'bitfit',
    'lora',
    'mona',
    'mslora',
    'mslora_proj',
    'mslora_stride2',
    'mslora_ratio',
)
#: starting lr grids (the grid extends itself where a choice lands on an edge)
GRIDS = dict(full=(3e-4, 1e-3, 3e-3), linear_probe=(None,), default=(3e-3, 1e-2, 3e-2))
TASKS = dict(
    det=dict(
        kind='det', title='Nuclei instance detection (Faster/Mask R-CNN)', metric='bbox AP (%)'
    ),
    fashion=dict(
        kind='cls', title='Fashion-MNIST (10 classes)', metric='top-1 (%)', classes=10, hflip=True
    ),
    digits=dict(
        kind='cls', title='scikit-learn digits (10 classes)', metric='top-1 (%)', classes=10
    ),
    nuclei=dict(kind='seg', title='Nuclei segmentation (2 classes)', metric='mIoU (%)', classes=2),
)
DET = dict(min_area=8, head_lr=1e-3, clip=10.0)
PROFILES = dict(
    cpu=dict(
        tasks=dict(
            det=dict(DET, detector='faster', crop=128, scale=1, batch=4, steps=800),
            fashion=dict(
                size=48,
                n_fit=2000,
                n_val=300,
                n_test=800,
                batch=32,
                steps=300,
                head_lr=3e-3,
                eval_batch=200,
            ),
            digits=dict(
                size=48,
                n_fit=960,
                n_val=240,
                n_test=597,
                batch=32,
                steps=150,
                head_lr=3e-3,
                eval_batch=200,
            ),
            nuclei=dict(crop=96, batch=8, steps=120, head_lr=1e-2),
        ),
        default_tasks=('det', 'fashion', 'nuclei'),
        seeds=(0, 1, 2),
        workers=2,
        threads=1,
        amp=False,
    ),
    cuda=dict(
        tasks=dict(
            det=dict(DET, detector='mask', crop=128, scale=2, batch=8, steps=400),
            fashion=dict(
                size=64,
                n_fit=54000,
                n_val=6000,
                n_test=10000,
                batch=128,
                steps=1500,
                head_lr=3e-3,
                eval_batch=1000,
            ),
            digits=dict(
                size=64,
                n_fit=960,
                n_val=240,
                n_test=597,
                batch=64,
                steps=400,
                head_lr=3e-3,
                eval_batch=1000,
            ),
            nuclei=dict(crop=128, batch=16, steps=600, head_lr=1e-2),
        ),
        default_tasks=('det', 'fashion', 'nuclei', 'digits'),
        seeds=(0, 1, 2),
        workers=12,
        threads=1,
        amp=True,
    ),
    quick=dict(
        tasks=dict(
            det=dict(
                DET, detector='faster', crop=64, scale=1, batch=1, steps=3, eval_at=(0.5, 1.0)
            ),
            fashion=dict(
                size=32,
                n_fit=48,
                n_val=24,
                n_test=24,
                batch=8,
                steps=6,
                head_lr=3e-3,
                eval_batch=64,
                eval_at=(0.5, 1.0),
            ),
            digits=dict(
                size=32,
                n_fit=48,
                n_val=24,
                n_test=24,
                batch=8,
                steps=6,
                head_lr=3e-3,
                eval_batch=64,
                eval_at=(0.5, 1.0),
            ),
            nuclei=dict(crop=64, batch=2, steps=4, head_lr=1e-2, eval_at=(0.5, 1.0)),
        ),
        default_tasks=('fashion',),
        seeds=(0, 1),
        workers=1,
        threads=1,
        amp=False,
    ),
)


def load_task(task: str, settings: dict, cache_dir: str) -> dict:
    """The task's fit / val / test data (decoded and resized once, cached)."""
    kind = TASKS[task]['kind']
    if kind == 'det':
        from bench.detection import load_instances

        return data.cached('nuclei_instances', load_instances, cache_dir)
    if kind == 'seg':
        return data.cached('nuclei_seg', data.load_nuclei, cache_dir)
    sizes = {k: settings[k] for k in ('size', 'n_fit', 'n_val', 'n_test')}
    return data.cached(
        task, data.load_fashion if task == 'fashion' else data.load_digits, cache_dir, **sizes
    )


_WORKER: dict = {}


def _init_worker(plan: dict, device: str, threads: int, cache_dir: str) -> None:
    torch.set_num_threads(threads)
    env.quiet()
    _WORKER.update(plan=plan, device=torch.device(device), cache_dir=cache_dir, data={})


def _worker_data(task: str, settings: dict) -> dict:
    """The task's data in this process, loaded once (on the device, but for detection)."""
    if task not in _WORKER['data']:
        loaded = load_task(task, settings, _WORKER['cache_dir'])
        _WORKER['data'][task] = (
            loaded
            if settings['kind'] == 'det'
            else {
                k: (x.to(_WORKER['device']), y.to(_WORKER['device']))
                for k, (x, y) in loaded.items()
            }
        )
    return _WORKER['data'][task]


def run_job(job: dict) -> dict:
    """One run of the grid in this process (a pool worker or the main process)."""
    plan, device, start = _WORKER['plan'], _WORKER['device'], time.perf_counter()
    task = job['task']
    settings = dict(TASKS[task], **plan['tasks'][task])
    _worker_data(task, settings)
    if settings['kind'] == 'det':
        from bench.detection import run_detection as run
    else:
        from bench.training import run_classic as run
    try:
        result = run(job, _WORKER['data'][task], settings, device, plan['amp'])
    except TypeError as err:  # an adapter option MSLoRAAdapter does not have (yet)
        if 'unexpected keyword argument' not in str(err):
            raise
        result = dict(error=f'{type(err).__name__}: {err}')
    return dict(job, key=grid.job_key(job), wall_s=round(time.perf_counter() - start, 1), **result)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (the cuda profile)")
    p.add_argument('--quick', action='store_true', help='the smoke profile: a few steps')
    p.add_argument('--tasks', nargs='+', choices=sorted(TASKS))
    p.add_argument('--rows', nargs='+', choices=report.NAMES.keys(), default=list(ROWS))
    p.add_argument('--seeds', nargs='+', type=int)
    p.add_argument('--steps', type=int, help='steps of every task (default: the profile)')
    p.add_argument(
        '--lrs',
        nargs='+',
        type=float,
        help='starting lr grid of every row with an lr (default: GRIDS)',
    )
    p.add_argument(
        '--lrs-from',
        metavar='STEM',
        help='start each row\'s grid at the lr chosen in this earlier run file (in --out) '
        'and its two neighbours; rows it lacks start at GRIDS',
    )
    p.add_argument(
        '--max-extend',
        type=int,
        default=3,
        help='at most this many lrs added beyond a row\'s starting grid',
    )
    p.add_argument('--threads', type=int, help='torch threads per worker')
    p.add_argument('--workers', type=int, help='processes running runs at once')
    p.add_argument('--amp', choices=('on', 'off'), help='bf16 autocast (default: on for cuda)')
    p.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results'))
    p.add_argument('--name', help='run file stem (default evidence_<profile>_<date>)')
    p.add_argument('--cache-dir', default=osp.join(ROOT, 'work_dirs', 'evidence_cache'))
    p.add_argument(
        '--resume',
        action='store_true',
        help='go on with --name, or the newest evidence_<profile>_*.jsonl in --out',
    )
    p.add_argument('--report-only', action='store_true', help='rewrite md/png, run nothing')
    p.add_argument(
        '--estimate',
        type=int,
        metavar='STEPS',
        help='time every row for STEPS steps (process CPU time) and project '
        'the grid per task, into estimate_<profile>.md; runs no grid',
    )
    p.add_argument(
        '--commit',
        action='store_true',
        help='git-commit the run files after every run (several sittings)',
    )
    return p.parse_args(argv)


def make_plan(args) -> dict:
    profile_name = 'quick' if args.quick else 'cuda' if args.device.startswith('cuda') else 'cpu'
    profile = copy.deepcopy(PROFILES[profile_name])
    tasks = args.tasks or profile['default_tasks']
    settings = {
        t: dict(profile['tasks'][t], **({'steps': args.steps} if args.steps else {})) for t in tasks
    }
    for t in tasks:
        settings[t].update(title=TASKS[t]['title'], metric=TASKS[t]['metric'])
    if 'mslora' not in args.rows:
        raise SystemExit('--rows must include mslora: every comparison is against it')
    if args.lrs_from and args.lrs:
        raise SystemExit('give --lrs or --lrs-from, not both: both set the starting grids')
    return dict(
        profile=profile_name,
        tasks=json.loads(json.dumps(settings)),
        rows=list(args.rows),
        lrs=args.lrs,
        lrs_from=args.lrs_from and osp.basename(args.lrs_from).replace('.jsonl', ''),
        starts=warm_starts(args, tasks, list(args.seeds or profile['seeds'])[0]),
        seeds=list(args.seeds or profile['seeds']),
        max_extend=args.max_extend,
        workers=args.workers or profile['workers'],
        threads=args.threads or profile['threads'],
        amp=profile['amp'] if args.amp is None else args.amp == 'on',
    )


def warm_starts(args, tasks, seed: int) -> dict:
    """``'task/row'`` -> the starting grid around the lr chosen in the ``--lrs-from``
    run file, for every task and row it holds a selection of ({} without the flag); of
    every row, not only ``--rows``, so a later sitting may add rows."""
    if not args.lrs_from:
        return {}
    stem = osp.basename(args.lrs_from)
    path = osp.join(args.out, stem if stem.endswith('.jsonl') else stem + '.jsonl')
    if not osp.exists(path):
        raise SystemExit(f'--lrs-from: no run file {path}; give the stem of one in --out')
    with open(path) as f:
        records = [r for r in (json.loads(line) for line in f if line.strip()) if 'error' not in r]
    rows = {r['row'] for r in records}
    starts = {f'{t}/{r}': grid.warm_start(records, t, r, seed) for t in tasks for r in rows}
    return {key: lrs for key, lrs in starts.items() if lrs}


def grids(plan: dict) -> dict:
    """(task, row) -> the row's starting lr grid: the plan's warm start (``--lrs-from``)
    where it has one, else ``--lrs`` or :data:`GRIDS` (the linear probe has no lr)."""

    def grid(task, row):
        start = GRIDS.get(row, GRIDS['default'])
        if start == (None,):
            return list(start)
        warm = plan.get('starts', {}).get(f'{task}/{row}')
        return list(warm or plan.get('lrs') or start)

    return {(t, r): grid(t, r) for t in plan['tasks'] for r in plan['rows']}


def run_paths(args, profile: str) -> dict:
    stem = args.name
    if stem is None and (args.resume or args.report_only):
        found = sorted(
            glob.glob(osp.join(args.out, f'evidence_{profile}_*.jsonl')), key=osp.getmtime
        )
        stem = osp.basename(found[-1])[: -len('.jsonl')] if found else None
    if stem is None:
        if args.resume or args.report_only:
            raise SystemExit(
                f'--resume / --report-only: no evidence_{profile}_*.jsonl in '
                f'{args.out}; give --name'
            )
        stem = f"evidence_{profile}_{datetime.datetime.utcnow():%Y-%m-%d}"
    return {
        k: osp.join(args.out, stem + ext)
        for k, ext in (
            ('jsonl', '.jsonl'),
            ('meta', '.json'),
            ('md', '.md'),
            ('png', '_curves.png'),
        )
    }


def load_run(paths: dict, plan: dict, args) -> tuple:
    """Records and meta of an earlier sitting; its task settings must be the same."""
    if not osp.exists(paths['jsonl']):
        return [], dict(commands=[], wall_min=0.0)
    with open(paths['meta']) as f:
        meta = json.load(f)
    if args.report_only:
        plan.update(
            {
                k: meta['plan'][k]
                for k in ('tasks', 'rows', 'seeds', 'lrs', 'max_extend', 'workers', 'threads')
            },
        )
    earlier = {k: meta['plan'].get(k) or v for k, v in (('starts', {}), ('lrs_from', None))}
    if plan['starts'] and earlier['starts'] and plan['starts'] != earlier['starts']:
        raise SystemExit(
            f"--resume: {paths['jsonl']} started its grids from {earlier['lrs_from']}; "
            'give the same --lrs-from (or none), or another --name'
        )
    if not plan['starts']:  # resuming without the flag keeps the run file's starts
        plan.update(earlier)
    for task, settings in plan['tasks'].items():
        if task in meta['plan']['tasks'] and meta['plan']['tasks'][task] != settings:
            raise SystemExit(
                f"--resume: {paths['jsonl']} ran {task} with "
                f"{meta['plan']['tasks'][task]}; give the same settings, or "
                f"another --name"
            )
        meta['plan']['tasks'][task] = settings
    records = []
    with open(paths['jsonl']) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short when a sitting was killed
                pass
    # an error (an adapter option missing) is tried again
    return [r for r in records if 'error' not in r or args.report_only], meta


def write_report(paths: dict, records: list, plan: dict, meta: dict) -> None:
    rplan = dict(plan, grids=grids(plan))
    summary = report.summarize(records, rplan)
    n = len(plan['seeds'])
    todo = grid.next_jobs(
        list(plan['tasks']),
        plan['rows'],
        plan['seeds'],
        rplan['grids'],
        records,
        plan['max_extend'],
    )
    lines = [
        '# Evidence: MSLoRA against its peers at each method\'s own learning rate',
        '',
        f"Commands: {'; '.join(f'`{c}`' for c in meta['commands'])}  ",
        f"Last written {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; mmslora at "
        f"{meta.get('commit')}; {meta.get('machine')}; torch {torch.__version__}; "
        f"{plan['workers']} worker(s) x {plan['threads']} thread(s); "
        f"{meta['wall_min']:.0f} min of runs so far.  ",
        f"Runs done: {len(records)}; "
        + (
            'complete.'
            if not todo
            else f'INCOMPLETE: {len(todo)} runnable now '
            f"(next: {todo[0]['key'] if 'key' in todo[0] else grid.job_key(todo[0])}); "
            '`--resume` goes on.'
        ),
        '',
        f"Protocol (benchmarks/README.md): lr per row chosen on val at seed "
        f"{plan['seeds'][0]} (bold), the grid extended where the choice is at an edge "
        f"(at most {plan['max_extend']} more)"
        + (
            f"; each row's grid starts at the lr chosen in `{plan['lrs_from']}` and its "
            'two neighbours'
            if plan.get('starts')
            else ''
        )
        + f"; test at seeds {plan['seeds']}. `*`: "
        '|mean difference| > std of the differences. SELECTING: lr selection still open; '
        f'"k of {n} seeds": test runs still missing.',
        '',
    ]
    if summary['errors']:
        lines += ['Errors: ' + '; '.join(summary['errors']), '']
    lines += report.glance_lines(summary, plan)
    for task, result in summary['tasks'].items():
        lines += report.task_lines(task, plan['tasks'][task], result, n)
    lines.append(
        f"Curves: `{osp.basename(paths['png'])}`; every run: `{osp.basename(paths['jsonl'])}`."
    )
    with open(paths['md'], 'w') as f:
        f.write('\n'.join(lines) + '\n')
    report.plot_curves(paths['png'], summary, plan)


def git_commit(paths: dict, message: str) -> None:
    """Commit the run files (only them) in the git repository that holds them."""
    files = [p for p in paths.values() if osp.exists(p)]
    where = osp.dirname(paths['jsonl'])
    try:
        subprocess.run(['git', '-C', where, 'add', '--'] + files, check=True, capture_output=True)
        subprocess.run(
            ['git', '-C', where, 'commit', '-q', '-m', message, '--'] + files,
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:  # tried again after the next run
        detail = getattr(err, 'stderr', b'') or b''
        print(f'git commit failed ({detail.decode().strip()[:200] or err}); going on', flush=True)


def estimate(args, plan: dict) -> dict:
    """CPU seconds a step and per run of every row at the profile's settings, from
    ``--estimate`` steps of one run each, and the grid's projected time per task when
    every row with an lr needs one extension."""
    _init_worker(plan, args.device, plan['threads'], args.cache_dir)
    out, gmap, lines = (
        {},
        grids(plan),
        [
            f"# Grid time estimate, profile {plan['profile']}",
            '',
            f"`{' '.join(['python benchmarks/evidence.py'] + sys.argv[1:])}`, "
            f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {plan['threads']} thread(s); "
            'process CPU time of one run per row.',
            '',
            '| task | steps | row | s / step | s fixed | s a run | runs | s in the grid |',
            '|---|---|---|---|---|---|---|---|',
        ],
    )
    for task, settings in plan['tasks'].items():
        total = 0.0
        _worker_data(task, dict(TASKS[task], **settings))
        for row in plan['rows']:
            lr = gmap[(task, row)][0]
            job = dict(task=task, row=row, lr=lr, seed=plan['seeds'][0])
            _WORKER['plan'] = dict(
                plan, tasks={task: dict(settings, steps=args.estimate, eval_at=[1.0])}
            )
            meter, start = env.CpuMeter(), time.process_time()
            record = run_job(job)
            cpu = time.process_time() - start
            step = record['train_cpu_s'] / args.estimate
            evals = len(settings.get('eval_at', EVAL_AT))
            run_s = step * settings['steps'] + (cpu - record['train_cpu_s']) * (evals + 1) / 2
            runs = (len(gmap[(task, row)]) + (lr is not None)) + len(plan['seeds']) - 1
            total += runs * run_s
            out[(task, row)] = dict(step=step, run_s=run_s, runs=runs, others=meter.others())
            lines.append(
                f"| {task} | {settings['steps']} | {row} | {step:.2f} | "
                f"{cpu - record['train_cpu_s']:.1f} | "
                f"{run_s:.0f} | {runs} | {runs * run_s:.0f} |"
            )
        lines.append(f"| {task} | | all | | | | | **{total / 3600:.2f} h** |")
    _WORKER['plan'] = plan
    with open(osp.join(args.out, f"estimate_{plan['profile']}.md"), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return out


def run_all(args, plan: dict, paths: dict, records: list, meta: dict) -> None:
    """Run the grid until nothing is left, writing and (``--commit``) committing the run
    files after every run."""
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch sees no GPU here')
    _init_worker(plan, args.device, plan['threads'], args.cache_dir)
    for task in plan['tasks']:  # data prepared (and errors raised) before any run
        load_task(task, dict(TASKS[task], **plan['tasks'][task]), args.cache_dir)
    if plan['amp']:
        from bench.training import check_amp

        check_amp(device, plan['rows'])
    start, wall0 = time.time(), meta['wall_min']

    def on_record(record):
        records.append(record)
        meta['wall_min'] = wall0 + (time.time() - start) / 60
        with open(paths['jsonl'], 'a') as f:
            f.write(json.dumps(record) + '\n')
        with open(paths['meta'], 'w') as f:
            json.dump(meta, f, indent=1)
        print(
            f"[{len(records)}] {record['key']}: "
            + (
                record['error']
                if 'error' in record
                else f"val {record['val']:.2f} test {record['test']:.2f} "
                f"train {record['train_s']:.0f}s wall {record['wall_s']:.0f}s"
            ),
            flush=True,
        )
        write_report(paths, records, plan, meta)
        if args.commit:
            git_commit(paths, f"evidence: {record['key']} ({osp.basename(paths['jsonl'])})")

    pool = None
    if plan['workers'] > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(
            plan['workers'],
            mp_context=multiprocessing.get_context('spawn'),
            initializer=_init_worker,
            initargs=(plan, args.device, plan['threads'], args.cache_dir),
        )
    gmap = grids(plan)
    try:
        grid.run_grid(
            lambda: grid.next_jobs(
                list(plan['tasks']), plan['rows'], plan['seeds'], gmap, records, plan['max_extend']
            ),
            run_job,
            on_record,
            plan['workers'],
            pool,
        )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    plan = make_plan(args)
    os.makedirs(args.out, exist_ok=True)
    paths = run_paths(args, plan['profile'])
    records, meta = load_run(paths, plan, args)
    command = 'python benchmarks/evidence.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    meta.update(
        plan=plan,
        machine=f'{platform.machine()}, {os.cpu_count()} CPUs',
        commit=env.git_commit(),
        commands=meta['commands'] + ([] if args.report_only else [command.strip()]),
    )
    if args.estimate:
        return estimate(args, plan)
    if not args.report_only:
        run_all(args, plan, paths, records, meta)
    write_report(paths, records, plan, meta)
    print(open(paths['md']).read())
    return dict(
        paths=paths,
        records=records,
        summary=report.summarize(records, dict(plan, grids=grids(plan))),
    )


if __name__ == '__main__':
    main()
