"""Reading the metrics that MMEngine's Runner writes into a work dir."""
import glob
import json
import os.path as osp


def latest_metrics(work_dir: str, key: str) -> dict:
    """The newest record holding ``key`` among the JSON logs of ``work_dir``'s runs
    (``<run>/<run>.json`` from tests, ``<run>/vis_data/<run>.json`` from training)."""
    files = glob.glob(osp.join(work_dir, '*', '*.json')) + glob.glob(
        osp.join(work_dir, '*', 'vis_data', '2*.json'))
    for path in sorted(files, key=osp.getmtime, reverse=True):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for record in reversed(records):
            if key in record:
                return record
    raise FileNotFoundError(f'no run under {work_dir} logged {key!r}')
