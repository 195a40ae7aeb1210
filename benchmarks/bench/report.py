"""The protocol's report: per task and row the lr selection, test mean +- std over the
seeds, the paired comparison against MSLoRA, cost, and the flatness of the validation
curve; incomplete cells are marked as such."""

import math
import statistics
from typing import Dict, List, Optional, Sequence

from .grid import choose_lr
from .methods import NAMES
from .stats import FLAT_TOLERANCE, flatness, paired_stats

REFERENCE = 'mslora'


def summarize(records: Sequence[dict], plan: dict) -> dict:
    """``plan``: tasks (name -> settings with ``title``, ``metric``), rows, seeds,
    grids ((task, row) -> starting grid), max_extend."""
    ok = [r for r in records if 'error' not in r]
    seeds = list(plan['seeds'])
    out = dict(tasks={}, errors=[r['key'] + ': ' + r['error'] for r in records if 'error' in r])
    for task in plan['tasks']:
        rows = {}
        for row in plan['rows']:
            state = choose_lr(
                ok, task, row, plan['grids'][(task, row)], seeds[0], plan['max_extend']
            )
            runs = {
                r['seed']: r
                for r in ok
                if (r['task'], r['row']) == (task, row)
                and state.get('done')
                and r['lr'] == state['lr']
            }
            rows[row] = _row(runs, seeds, state)
        ref = rows.get(REFERENCE)
        for row, data in rows.items():
            data['ref_minus'] = _pair(ref, data) if row != REFERENCE else None
        done = [r for r in rows if rows[r]['test_mean'] is not None]
        best = max(done, key=lambda r: rows[r]['test_mean']) if done else None
        out['tasks'][task] = dict(rows=rows, best=best)
    return out


def _row(runs: Dict[int, dict], seeds: Sequence[int], state: dict) -> dict:
    have = [s for s in seeds if s in runs]
    tests = [runs[s]['test'] for s in have]
    row = dict(
        lr=state['lr'],
        scores=state['scores'],
        selected=bool(state.get('done')),
        edge=state['edge'],
        seeds=have,
        per_seed=tests,
        complete=len(have) == len(seeds),
        test_mean=statistics.fmean(tests) if tests else None,
        test_std=statistics.stdev(tests) if len(tests) > 1 else None,
        diverged=[s for s in have if runs[s]['diverged']],
    )
    if have:
        curves = [runs[s]['val_curve'] for s in have]
        n = min(len(c) for c in curves)
        curve = [[curves[0][i][0], statistics.fmean(c[i][1] for c in curves)] for i in range(n)]
        extra = [runs[s].get('test_metrics') or {} for s in have]
        peaks = [runs[s]['peak_mib'] for s in have if runs[s].get('peak_mib') is not None]
        row.update(
            params=runs[have[0]]['params'],
            val_curve=curve,
            flatness=flatness(curve) if n > 1 else None,
            val_final_std=(statistics.stdev(c[-1][1] for c in curves) if len(curves) > 1 else None),
            train_s=statistics.fmean(runs[s]['train_s'] for s in have),
            train_cpu_s=statistics.fmean(runs[s].get('train_cpu_s', math.nan) for s in have),
            peak_mib=max(peaks) if peaks else None,
            test_metrics={
                k: statistics.fmean(m[k] for m in extra)
                for k in extra[0]
                if all(k in m for m in extra)
            },
        )
    return row


def _pair(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """:func:`paired_stats` of a - b over the seeds both have."""
    if not a or not b:
        return None
    common = [s for s in a['seeds'] if s in b['seeds']]
    if not common:
        return None
    va, vb = dict(zip(a['seeds'], a['per_seed'])), dict(zip(b['seeds'], b['per_seed']))
    return dict(paired_stats([va[s] for s in common], [vb[s] for s in common]), seeds=common)


def _f(value, fmt='.2f', none='-'):
    return none if value is None else format(value, fmt)


def _pair_text(p: Optional[dict], n_seeds: int) -> str:
    if not p:
        return '-'
    t = '-' if p['t'] is None else ('inf' if math.isinf(p['t']) else f"{p['t']:+.2f}")
    mark = ' *' if p['exceeds_spread'] else ''
    partial = '' if p['n'] == n_seeds else f" ({p['n']} of {n_seeds} seeds)"
    return f"{p['mean']:+.2f} +- {p['std']:.2f} (t {t}, p {_f(p['p'], '.3f')}){mark}{partial}"


def _lr_cell(row: dict) -> str:
    def fmt(lr):
        return '-' if lr is None else format(lr, 'g')

    tried = ', '.join(
        ('**' if row['selected'] and lr == row['lr'] else '')
        + f'{fmt(lr)}: {v:.1f}'
        + ('**' if row['selected'] and lr == row['lr'] else '')
        for lr, v in sorted(row['scores'].items(), key=lambda kv: kv[0] or 0)
    )
    if not row['selected']:
        return (tried + '; ' if tried else '') + 'SELECTING'
    return tried + (' (EDGE: not bracketed)' if row['edge'] else '')


def task_lines(task: str, settings: dict, result: dict, n_seeds: int) -> List[str]:
    metric = settings['metric']
    extra_keys = sorted({k for r in result['rows'].values() for k in r.get('test_metrics', {})})
    shown = {k: v for k, v in settings.items() if k not in ('title', 'metric')}
    lines = [
        f"## {settings['title']}",
        '',
        f"Settings: {shown}.",
        '',
        f"| row | lr (val {metric} at each lr tried) | test {metric} mean +- std | "
        f"per seed | {NAMES[REFERENCE]} - row | "
        + ''.join(f'{k} | ' for k in extra_keys)
        + 'trainable in backbone (all) | train s (CPU s) | peak MiB | val change, last 20% |',
        '|---' * (9 + len(extra_keys)) + '|',
    ]
    for row, r in result['rows'].items():
        mean = '-' if r['test_mean'] is None else f"{r['test_mean']:.2f} +- {_f(r['test_std'])}"
        if row == result['best']:
            mean = f'**{mean}**'
        if r['seeds'] and not r['complete']:
            mean += f" ({len(r['seeds'])} of {n_seeds} seeds)"
        p = r.get('params')
        flat = r.get('flatness')
        lines.append(
            f"| {NAMES.get(row, row)} | {_lr_cell(r)} | {mean} | "
            f"{', '.join(f'{v:.2f}' for v in r['per_seed']) or '-'}"
            f"{' (diverged: {})'.format(r['diverged']) if r['diverged'] else ''} | "
            f"{_pair_text(r['ref_minus'], n_seeds) if row != REFERENCE else ''} | "
            + ''.join(f"{_f(r.get('test_metrics', {}).get(k))} | " for k in extra_keys)
            + (f"{p['backbone_trainable']:,d} ({p['trainable']:,d})" if p else '-')
            + ' | '
            f"{_f(r.get('train_s'), '.0f')} ({_f(r.get('train_cpu_s'), '.0f')}) | "
            f"{_f(r.get('peak_mib'), '.0f')} | "
            f"{_f(100 * flat['rel_change'], '+.2f') + '%' if flat else '-'} |"
        )
    best = result['best']
    if best and result['rows'][best].get('flatness'):
        f = result['rows'][best]['flatness']
        lines += [
            '',
            f"Best test mean: {NAMES.get(best, best)}. Its validation curve (mean "
            f"over seeds, chosen lr) changes by {100 * f['rel_change']:+.2f}% "
            f"({f['start']:.2f} -> {f['final']:.2f}) over the last 20% of the steps: "
            f"{'flat' if f['flat'] else 'NOT flat'} at the "
            f"{100 * FLAT_TOLERANCE:.0f}% tolerance"
            + _against_noise(f, result['rows'][best].get('val_final_std'))
            + '.',
        ]
    return lines + ['', verdict(result['rows']), '']


def _against_noise(flat: dict, final_std) -> str:
    """The change over the last 20% set against the seeds' spread of the final val
    score (the noise a single evaluation carries); '' with fewer than 2 seeds."""
    if final_std is None:
        return ''
    change = abs(flat['final'] - flat['start'])
    side = 'within' if change <= final_std else 'beyond'
    return (
        f"; the change ({change:.2f} points) is {side} the seeds' spread of the final "
        f"val score (std {final_std:.2f})"
    )


def _standing(p: dict) -> str:
    """Where MSLoRA stands against a row by a paired comparison (MSLoRA minus the row):
    'above' or 'below' where |mean| > the std of the differences, else 'level'."""
    return 'level' if not p['exceeds_spread'] else 'above' if p['mean'] > 0 else 'below'


def verdict(rows: Dict[str, dict]) -> str:
    """Which rows MSLoRA is above, below or level with, by the paired comparison."""
    groups = dict(above=[], below=[], level=[])
    for row, r in rows.items():
        p = r.get('ref_minus')
        if row == REFERENCE or not p or p['n'] < 2:
            continue
        groups[_standing(p)].append(f"{NAMES.get(row, row)} ({p['mean']:+.2f})")
    if not any(groups.values()):
        return 'Paired comparison: not enough seeds yet.'
    above, below, level = (', '.join(groups[k]) or 'none' for k in ('above', 'below', 'level'))
    return (
        'Paired comparison (|mean difference| > its std across seeds): MSLoRA above '
        f'{above}; below {below}; within the seed spread of {level}.'
    )


def _glance_cell(p: Optional[dict], n_seeds: int) -> str:
    if not p or p['n'] < 2:
        return '-'
    partial = '' if p['n'] == n_seeds else f" ({p['n']} seeds)"
    return f"{_standing(p)} {p['mean']:+.1f}{partial}"


def glance_lines(summary: dict, plan: dict) -> List[str]:
    """The verdict at a glance: per row, where MSLoRA stands against it on every task
    (above / level / below by the paired comparison, MSLoRA minus the row) and the
    row's cost on the first task (trainable parameters in the backbone, CPU seconds and
    peak memory of a training run, means over its seeds)."""
    tasks = list(summary['tasks'])
    first = tasks[0]
    n_seeds = len(plan['seeds'])
    lines = [
        '## Verdict at a glance',
        '',
        f"MSLoRA minus each row, test score, mean over the paired seeds: above / below "
        f"where |mean| > the std of the differences, else level. Cost: "
        f"{plan['tasks'][first]['title']}, per training run.",
        '',
        '| row | '
        + ''.join(f"{plan['tasks'][t]['title']}, {plan['tasks'][t]['metric']} | " for t in tasks)
        + 'trainable in backbone | CPU s | peak MiB |',
        '|---' * (len(tasks) + 4) + '|',
    ]
    for row in plan['rows']:
        cells = []
        for task in tasks:
            r = summary['tasks'][task]['rows'][row]
            if row == REFERENCE:
                mean = r['test_mean']
                cells.append('-' if mean is None else f"{mean:.1f} +- {_f(r['test_std'], '.1f')}")
            else:
                cells.append(_glance_cell(r.get('ref_minus'), n_seeds))
        cost = summary['tasks'][first]['rows'][row]
        params = cost.get('params')
        lines.append(
            f"| {NAMES.get(row, row)} | "
            + ''.join(f'{c} | ' for c in cells)
            + (f"{params['backbone_trainable']:,d}" if params else '-')
            + f" | {_f(cost.get('train_cpu_s'), '.0f')} | {_f(cost.get('peak_mib'), '.0f')} |"
        )
    return lines + ['']


def plot_curves(path: str, summary: dict, plan: dict) -> None:
    """Validation score against step (mean over seeds at the chosen lr) per row, the
    last 20% of the steps shaded."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    tasks = list(summary['tasks'])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        steps = plan['tasks'][task]['steps']
        ax.axvspan(0.8 * steps, steps, color='0.9', label='last 20%')
        for row, r in summary['tasks'][task]['rows'].items():
            if not r.get('val_curve'):
                continue
            xs, ys = zip(*r['val_curve'])
            change = f" ({100 * r['flatness']['rel_change']:+.1f}%)" if r['flatness'] else ''
            ax.plot(
                xs,
                ys,
                marker='o',
                ms=3,
                lw=2.5 if row == REFERENCE else 1.3,
                label=f"{NAMES.get(row, row)} lr {_f(r['lr'], 'g')}{change}",
            )
        ax.set_title(plan['tasks'][task]['title'])
        ax.set_xlabel('step')
        ax.set_ylabel(f"validation {plan['tasks'][task]['metric']}")
        ax.legend(fontsize=6, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
