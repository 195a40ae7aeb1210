"""The protocol's grid: which runs to do next, given the runs done.

For every task and row (a method or MSLoRA variant):

1. **lr selection** at the first seed: one run per lr of the row's starting grid,
   scored on the val split; the best final val score wins (the smaller lr on a tie; a
   diverged run never wins). When the winner is the smallest or largest lr tried, the
   next lr out on :data:`LADDER` is run too (``phase='extend'``), until the winner lies
   inside the lrs tried, the ladder ends, or ``max_extend`` extensions were run: the
   grid brackets every chosen lr, or the report says it does not.
2. **test**: the other seeds at the chosen lr. Every run scores the test split at its
   end, so the selection run of the first seed at the chosen lr is that seed's test run.

A row with nothing to train in the backbone (the linear probe) has no lr of its own
(``lr=None``: one selection run). All selection and extension runs of every task come
before any test run, so a grid stopped early still compares every row at one seed; the
test runs go row by row across the tasks, so it then lacks seeds of the last rows only.

A longer schedule can start each row's grid around the lr an earlier run file chose
(:func:`warm_start`) rather than at the fixed starting grid: fewer runs, and step 1
still brackets whatever lr wins.
"""

from typing import Dict, List, Optional, Sequence, Tuple

#: the lrs a grid can reach, a factor of about 3 apart
LADDER = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def job_key(job: dict) -> str:
    lr = '-' if job['lr'] is None else format(job['lr'], 'g')
    return f"{job['task']}/{job['row']}/lr{lr}/s{job['seed']}"


def _selection(records: Sequence[dict], task: str, row: str, seed: int) -> Dict:
    return {
        r['lr']: r
        for r in records
        if (r['task'], r['row'], r['seed']) == (task, row, seed) and 'error' not in r
    }


def _score(record: dict) -> float:
    return float('-inf') if record['diverged'] else record['val']


def choose_lr(
    records: Sequence[dict],
    task: str,
    row: str,
    grid: Sequence[Optional[float]],
    seed: int,
    max_extend: int = 3,
) -> dict:
    """The state of a row's lr selection: ``lr`` (chosen, or None while open),
    ``scores`` (lr -> final val score of every lr tried), ``next`` (the lrs still to
    run), ``edge`` (True when the chosen lr is at an end of the lrs tried: the ladder
    or ``max_extend`` stopped the extension)."""
    runs = _selection(records, task, row, seed)
    scores = {lr: r['val'] for lr, r in runs.items()}
    missing = [lr for lr in grid if lr not in runs]
    state = dict(lr=None, scores=scores, next=missing, edge=False, phase='select')
    if missing:
        return state
    if list(grid) == [None]:
        return dict(state, done=True)
    tried = sorted(runs)
    best = max(tried, key=lambda lr: _score(runs[lr]))  # max keeps the first: smallest lr
    extensions = len([lr for lr in tried if lr not in grid])
    at_low, at_high = best == tried[0], best == tried[-1]
    out = None
    if at_high and LADDER.index(best) + 1 < len(LADDER):
        out = LADDER[LADDER.index(best) + 1]
    elif at_low and LADDER.index(best) > 0:
        out = LADDER[LADDER.index(best) - 1]
    if (at_low or at_high) and out is not None and extensions < max_extend:
        return dict(state, next=[out], phase='extend')
    return dict(state, lr=best, done=True, edge=at_low or at_high)


def warm_start(records: Sequence[dict], task: str, row: str, seed: int) -> Optional[List[float]]:
    """The lr chosen among a row's selection runs at ``seed`` in ``records`` (an earlier
    run file) and its neighbours on :data:`LADDER`, as a starting grid; None when the
    records hold no selection run of the row, or the row has no lr of its own."""
    runs = _selection(records, task, row, seed)
    if not runs or None in runs:
        return None
    best = choose_lr(records, task, row, sorted(runs), seed, max_extend=0)['lr']
    i = LADDER.index(best)
    return list(LADDER[max(i - 1, 0) : i + 2])


def next_jobs(
    tasks: Sequence[str],
    rows: Sequence[str],
    seeds: Sequence[int],
    grids: Dict[Tuple[str, str], List[Optional[float]]],
    records: Sequence[dict],
    max_extend: int = 3,
) -> List[dict]:
    """Every run that can start now: selection and extension runs of all tasks first
    (task by task), then test runs row by row across the tasks, in the order of ``rows``
    (a grid stopped early has the first rows complete on every task, not the first
    tasks); ``grids[(task, row)]`` is the row's starting lr grid ([None]: no lr)."""
    first, tests = [], []
    done = {r['key'] for r in records}
    for task in tasks:
        for row in rows:
            state = choose_lr(records, task, row, grids[(task, row)], seeds[0], max_extend)
            if not state.get('done'):
                first += [
                    dict(task=task, row=row, lr=lr, seed=seeds[0], phase=state['phase'])
                    for lr in state['next']
                ]
                continue
            tests += [
                dict(task=task, row=row, lr=state['lr'], seed=s, phase='test') for s in seeds[1:]
            ]
    tests.sort(key=lambda job: rows.index(job['row']))  # stable: task order within a row
    return [j for j in first + tests if job_key(j) not in done]


def run_grid(next_fn, run_fn, on_record, workers: int = 1, pool=None) -> int:
    """Run what ``next_fn()`` returns until it returns nothing: in this process
    (``pool`` None) or ``workers`` at a time in ``pool`` (a ``concurrent.futures``
    executor); ``on_record(record)`` after each run. Returns the number of runs."""
    n = 0
    if pool is None:
        while True:
            jobs = next_fn()
            if not jobs:
                return n
            on_record(run_fn(jobs[0]))
            n += 1
    from concurrent.futures import FIRST_COMPLETED, wait

    flying = {}
    while True:
        for job in next_fn():
            if len(flying) >= workers:
                break
            if job_key(job) not in flying.values():
                flying[pool.submit(run_fn, job)] = job_key(job)
        if not flying:
            return n
        finished, _ = wait(list(flying), return_when=FIRST_COMPLETED)
        for future in finished:
            del flying[future]
            on_record(future.result())
            n += 1
