"""Check, before a run builds anything, that the data a config names is there.

Without it a missing dataset shows up as whatever the toolbox trips over first,
after the model is built and the pretrained weights are loaded: mmdet
``FileNotFoundError: [Errno 2] No such file or directory: '.../instances_train.json'``,
mmseg ``... No such file or directory: '.../images/train'``, mmpretrain's
``Cannot find FashionMNIST dataset in ..., you can specify `download=True``` (which
cannot work offline); an image folder that is missing or empty fails later still,
at the first batch, or as an empty dataset.

:func:`check_data` looks at the datasets of the named dataloaders (through
``RepeatDataset``/``ConcatDataset``-style wrappers) and evaluators and raises
:class:`DataNotFoundError` naming every missing or empty file and folder, and how to
create them: the config's ``data_preparation`` command (``{data_root}`` is filled in;
the demo data configs set it to their converter), or a pointer to the toolbox's
dataset preparation guide.
"""

import os
import os.path as osp
from typing import Iterable, Iterator, List, Optional, Tuple

__all__ = ['DataNotFoundError', 'check_data', 'find_data_problems', 'PREPARATION_KEY']

#: Top-level config key with the command that creates the data, e.g.
#: ``'python tools/dataset_converters/nuclei.py {data_root}'``.
PREPARATION_KEY = 'data_preparation'


class DataNotFoundError(FileNotFoundError):
    """Files or folders a config's datasets need are missing or empty.

    Attributes:
        problems (list[str]): one line per missing/empty path.
    """

    def __init__(self, message: str, problems: List[str]):
        super().__init__(message)
        self.problems = list(problems)


def _is_remote(path: str) -> bool:
    return '://' in path


def _local_backend(dataset: dict) -> bool:
    backend = dataset.get('backend_args') or {}
    return backend.get('backend', 'local') == 'local'


def _datasets(cfg, where: str) -> Iterator[Tuple[str, dict]]:
    """``(where, dataset config)`` for every leaf dataset below a dataset config."""
    if not isinstance(cfg, dict):
        return
    if isinstance(cfg.get('datasets'), (list, tuple)):
        for i, item in enumerate(cfg['datasets']):
            yield from _datasets(item, f'{where}.datasets[{i}]')
    elif isinstance(cfg.get('dataset'), dict):
        yield from _datasets(cfg['dataset'], f'{where}.dataset')
    else:
        yield where, cfg


def _dataset_class(type_name, default_scope: Optional[str]):
    if not isinstance(type_name, str):
        return type_name if isinstance(type_name, type) else None
    try:
        from mmengine.registry import DATASETS

        with DATASETS.switch_scope_and_registry(default_scope) as registry:
            return registry.get(type_name)
    except Exception:
        return None


def _folder_problem(path: str, what: str) -> Optional[str]:
    if not osp.isdir(path):
        return f'{what} {path!r} does not exist'
    try:
        if not os.listdir(path):
            return f'{what} {path!r} is empty'
    except OSError as err:
        return f'{what} {path!r} cannot be read ({err})'
    return None


def _dataset_problems(dataset: dict, default_scope) -> List[Tuple[str, str]]:
    """``(path, problem)`` pairs for one (leaf) dataset config."""
    if not _local_backend(dataset):
        return []
    root = dataset.get('data_root') or ''
    if not isinstance(root, str) or _is_remote(root):
        return []
    if root and not osp.isdir(root):
        return [(root, f'data_root {root!r} does not exist')]
    problems = []
    ann_file = dataset.get('ann_file')
    if isinstance(ann_file, str) and ann_file and not _is_remote(ann_file):
        path = osp.join(root, ann_file)
        if not osp.isfile(path):
            problems.append((path, f'annotation file {path!r} does not exist'))
    prefix = dataset.get('data_prefix')
    if isinstance(prefix, str):
        prefix = dict(img_path=prefix)
    for key, value in (prefix or {}).items() if isinstance(prefix, dict) else ():
        if key == 'root' or not isinstance(value, str) or not value or _is_remote(value):
            continue
        path = osp.join(root, value)
        problem = _folder_problem(path, f'{key} folder')
        if problem:
            problems.append((path, problem))
    # mmpretrain's MNIST family names its files in class attributes (and needs all four)
    cls = _dataset_class(dataset.get('type'), default_scope)
    files = (
        [
            f
            for f, _ in getattr(cls, 'train_list', []) + getattr(cls, 'test_list', [])
            if isinstance(f, str)
        ]
        if cls is not None
        else []
    )
    if files and not dataset.get('download', True):  # download=True fetches them
        for name in files:
            path = osp.join(root, name[:-3] if name.endswith('.gz') else name)
            if not osp.isfile(path):
                problems.append((path, f'{cls.__name__} file {path!r} does not exist'))
    return problems


def _evaluators(cfg, name: str) -> Iterator[Tuple[str, dict]]:
    evaluator = cfg.get(name)
    if isinstance(evaluator, dict) and isinstance(evaluator.get('metrics'), (list, dict)):
        evaluator = evaluator['metrics']  # dict(type='Evaluator', metrics=[...])
    if isinstance(evaluator, dict):
        yield name, evaluator
    elif isinstance(evaluator, (list, tuple)):
        for i, item in enumerate(evaluator):
            if isinstance(item, dict):
                yield f'{name}[{i}]', item


def find_data_problems(
    cfg, dataloaders: Iterable[str] = ('train_dataloader', 'val_dataloader')
) -> List[str]:
    """One line per missing or empty file/folder of ``cfg``'s datasets (each path
    once, under the first config entry that needs it)."""
    found: List[Tuple[str, str]] = []
    scope = cfg.get('default_scope')
    for name in dataloaders:
        loader = cfg.get(name)
        if isinstance(loader, dict):
            for where, dataset in _datasets(loader.get('dataset'), f'{name}.dataset'):
                found += [
                    (path, f'{where}: {text}') for path, text in _dataset_problems(dataset, scope)
                ]
        evaluator = name.replace('_dataloader', '_evaluator')
        for where, metric in _evaluators(cfg, evaluator):
            ann_file = metric.get('ann_file')
            if (
                isinstance(ann_file, str)
                and ann_file
                and not _is_remote(ann_file)
                and not osp.isfile(ann_file)
            ):
                found.append((ann_file, f'{where}: annotation file {ann_file!r} does not exist'))
    problems, seen = [], set()
    for path, text in found:
        key = osp.normpath(path)
        if key not in seen:
            seen.add(key)
            problems.append(text)
    return problems


def _first_data_root(cfg, dataloaders) -> str:
    for name in dataloaders:
        loader = cfg.get(name)
        if isinstance(loader, dict):
            for _, dataset in _datasets(loader.get('dataset'), name):
                if dataset.get('data_root'):
                    return dataset['data_root']
    return 'DATA_ROOT'


def check_data(cfg, dataloaders: Iterable[str] = ('train_dataloader', 'val_dataloader')) -> None:
    """Raise :class:`DataNotFoundError` when a dataset of ``dataloaders`` lacks files.

    ``tools/train.py`` checks the train and val dataloaders, ``tools/test.py`` the
    test dataloader, before the Runner is built.
    """
    dataloaders = tuple(dataloaders)
    problems = find_data_problems(cfg, dataloaders)
    if not problems:
        return
    data_root = _first_data_root(cfg, dataloaders)
    command = cfg.get(PREPARATION_KEY)
    if isinstance(command, str) and command:
        how = (
            'Create the data with\n    '
            + command.format(data_root=data_root)
            + '\nor point the config at where it is, e.g. --cfg-options '
            f'{dataloaders[0]}.dataset.data_root=DIR/ (and the other dataloaders and '
            'evaluators likewise).'
        )
    else:
        how = (
            'Prepare the dataset as the toolbox\'s dataset preparation guide describes '
            '(mmdet, mmseg and mmpretrain each have one), or point the config at where '
            f'it is, e.g. --cfg-options {dataloaders[0]}.dataset.data_root=DIR/.'
        )
    raise DataNotFoundError(
        'The data this config trains or tests on is missing:\n  - '
        + '\n  - '.join(problems)
        + '\n'
        + how,
        problems,
    )
