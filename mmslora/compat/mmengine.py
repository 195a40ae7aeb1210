"""Every use of mmengine's private API by mmslora, in one place.

Written for mmengine 0.10.x and tested with mmengine 0.10.7. mmengine does not
promise to keep any of these names; each accessor below checks that the name is
there and otherwise raises :class:`PrivateAPIError` naming the attribute and the
installed mmengine version, so that a rename in mmengine fails loudly instead of
silently turning an mmslora feature off. :func:`check_private_api` checks all of
them at once (``tests/test_compat/test_mmengine.py`` calls it).

What is touched, and what for (:data:`PRIVATE_API` lists the same):

* ``mmengine.runner.checkpoint.CheckpointLoader._schemes`` (the prefix -> loader
  map): :func:`checkpoint_schemes`, :func:`replace_checkpoint_scheme`. mmslora
  replaces mmengine's checkpoint loaders by its weights-only ones
  (``mmslora.utils.checkpoint.schemes``), the one patch of mmengine it makes;
  ``_schemes`` tells whether a loader is already installed.
* ``mmengine.runner.checkpoint._get_mmengine_home`` (the cache folder of
  ``open-mmlab://`` files given as relative paths): :func:`mmengine_home`.
* ``mmengine.runner.checkpoint._process_mmcls_checkpoint`` (the key conversion of
  ``mmcls://`` checkpoints): :func:`process_mmcls_checkpoint`.
* ``Runner._resume`` / ``FlexibleRunner._resume`` (``resume=``),
  ``Runner._load_from`` / ``FlexibleRunner._load_from`` (``load_from=``) and
  ``Runner._randomness_cfg`` / ``FlexibleRunner._randomness_cfg``
  (``randomness=``), instance attributes set in ``__init__``:
  :func:`runner_is_resuming`, :func:`runner_load_from`,
  :func:`runner_randomness_cfg` (``mmslora.RandomStateHook``,
  ``mmslora.CheckpointFitHook``).
* ``IterBasedTrainLoop.dataloader_iterator``, set in ``__init__`` and read by
  ``run`` for every batch: :func:`loop_dataloader_iterator`,
  :func:`set_loop_dataloader_iterator` (``mmslora.RandomStateHook`` wraps it to
  restore the random state right before the first batch after a resume).
* ``mmengine.config.Config._get_cfg_path`` (the function ``Config`` turns each
  ``_base_`` entry into a file and a scope with): :func:`register_config_package`
  (``import mmslora`` makes ``_base_ = 'mmslora::_base_/mslora.py'`` name the shipped
  file). mmengine's own ``package::`` lookup needs the package in its table
  ``MODULE2PACKAGE``, finds it through the distribution's location (site-packages
  for an editable install, where the package is not) and builds everything the
  file defines in the package's scope, which would look up the toolbox's types
  (``'ResNet'`` of ``_base_.model.backbone``) among mmslora's; mmslora's files read
  as a path does, without a scope.

This module imports nothing from the rest of mmslora.
"""

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import mmengine

__all__ = [
    'WRITTEN_FOR',
    'TESTED_WITH',
    'PrivateAttribute',
    'PRIVATE_API',
    'PRIVATE_ATTRIBUTE_NAMES',
    'PrivateAPIError',
    'check_private_api',
    'checkpoint_schemes',
    'replace_checkpoint_scheme',
    'mmengine_home',
    'process_mmcls_checkpoint',
    'runner_is_resuming',
    'runner_load_from',
    'runner_randomness_cfg',
    'loop_dataloader_iterator',
    'set_loop_dataloader_iterator',
    'register_config_package',
]

#: The mmengine release series this module was written for, and the release tested.
WRITTEN_FOR = '0.10.x'
TESTED_WITH = '0.10.7'


@dataclass(frozen=True)
class PrivateAttribute:
    """One private mmengine attribute mmslora uses.

    Attributes:
        module (str): the mmengine module, e.g. ``'mmengine.runner.checkpoint'``.
        owner (str): the class in ``module`` that has the attribute; ``''`` for an
            attribute of the module itself.
        name (str): the attribute, e.g. ``'_schemes'``.
        methods (tuple[str]): for an instance attribute, the methods of ``owner``
            whose code must name it (where mmengine sets and reads it); empty for an
            attribute of the class or module.
        use (str): what mmslora needs it for.
    """

    module: str
    owner: str
    name: str
    methods: Tuple[str, ...] = ()
    use: str = ''

    @property
    def path(self) -> str:
        return '.'.join(p for p in (self.module, self.owner, self.name) if p)

    def present(self) -> bool:
        """Whether the installed mmengine still has this attribute."""
        try:
            owner = importlib.import_module(self.module)
            if self.owner:
                owner = getattr(owner, self.owner)
        except (ImportError, AttributeError):
            return False
        if not self.methods:
            return hasattr(owner, self.name)
        return all(self.name in _code_names(getattr(owner, m, None)) for m in self.methods)


def _code_names(function) -> set:
    """The attribute and global names ``function``'s code (nested code included) uses."""
    code = getattr(function, '__code__', None)
    names = set()
    stack = [code] if code is not None else []
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if hasattr(c, 'co_names'))
    return names


_CHECKPOINT = 'mmengine.runner.checkpoint'
_RUNNERS = ('Runner', 'FlexibleRunner')

#: Every private mmengine attribute mmslora reads or patches.
PRIVATE_API: Tuple[PrivateAttribute, ...] = (
    PrivateAttribute(
        _CHECKPOINT,
        'CheckpointLoader',
        '_schemes',
        use='which loader each checkpoint scheme has (safe loading)',
    ),
    PrivateAttribute(
        _CHECKPOINT, '', '_get_mmengine_home', use='the cache folder of open-mmlab:// files'
    ),
    PrivateAttribute(
        _CHECKPOINT,
        '',
        '_process_mmcls_checkpoint',
        use='the key conversion of mmcls:// checkpoints',
    ),
    *(
        PrivateAttribute('mmengine.runner', runner, name, ('__init__', 'load_or_resume'), use)
        for runner in _RUNNERS
        for name, use in (
            ('_resume', 'whether the run resumes (RandomStateHook, CheckpointFitHook)'),
            ('_load_from', 'the checkpoint file named in messages (CheckpointFitHook)'),
        )
    ),
    *(
        PrivateAttribute(
            'mmengine.runner',
            runner,
            '_randomness_cfg',
            ('__init__',),
            'diff_rank_seed (RandomStateHook)',
        )
        for runner in _RUNNERS
    ),
    PrivateAttribute(
        'mmengine.runner',
        'IterBasedTrainLoop',
        'dataloader_iterator',
        ('__init__', 'run'),
        'restore the random state before the first batch (RandomStateHook)',
    ),
    PrivateAttribute(
        'mmengine.config',
        'Config',
        '_get_cfg_path',
        ('_file2dict',),
        'mmslora::<config> names in _base_ (register_config_package)',
    ),
)

#: The attribute names of :data:`PRIVATE_API` (no module outside this one may use
#: them: ``tests/test_layers.py``).
PRIVATE_ATTRIBUTE_NAMES: Tuple[str, ...] = tuple(sorted({a.name for a in PRIVATE_API}))


class PrivateAPIError(RuntimeError):
    """A private mmengine attribute mmslora relies on is gone.

    Attributes:
        attribute (str): the attribute, e.g.
            ``'mmengine.runner.checkpoint.CheckpointLoader._schemes'``.
        mmengine_version (str): the installed mmengine version.
    """

    def __init__(self, attribute: str):
        self.attribute = attribute
        self.mmengine_version = mmengine.__version__
        super().__init__(
            f'mmslora needs the private mmengine attribute {attribute}, which the '
            f'installed mmengine {self.mmengine_version} does not have. '
            f'mmslora.compat.mmengine was written for mmengine {WRITTEN_FOR} (tested '
            f'with {TESTED_WITH}): install such a version, or adapt '
            'mmslora/compat/mmengine.py to this one.'
        )


def check_private_api() -> List[str]:
    """The dotted paths of the :data:`PRIVATE_API` attributes the installed mmengine
    lacks; empty when everything mmslora uses is there."""
    return [a.path for a in PRIVATE_API if not a.present()]


def _read(obj, owner: str, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise PrivateAPIError(f'{owner}.{name}') from None


def _runner_attribute(runner, name: str) -> Any:
    return _read(runner, f'{type(runner).__module__}.{type(runner).__qualname__}', name)


# --------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------
def checkpoint_schemes() -> Dict[str, Callable]:
    """``CheckpointLoader._schemes``: every registered prefix and its loader (mmengine
    replaces the dict on each registration, so do not keep it)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    return _read(CheckpointLoader, f'{_CHECKPOINT}.CheckpointLoader', '_schemes')


def replace_checkpoint_scheme(prefix: str, loader: Callable) -> None:
    """Make ``loader`` mmengine's loader for ``prefix``, replacing the one registered
    (mmengine's own); nothing happens when it already is."""
    from mmengine.runner.checkpoint import CheckpointLoader

    if checkpoint_schemes().get(prefix) is not loader:
        CheckpointLoader.register_scheme(prefixes=prefix, loader=loader, force=True)


def mmengine_home() -> str:
    """``mmengine.runner.checkpoint._get_mmengine_home()``: mmengine's cache folder
    (created if needed)."""
    from mmengine.runner import checkpoint

    return _read(checkpoint, _CHECKPOINT, '_get_mmengine_home')()


def process_mmcls_checkpoint(checkpoint: dict) -> dict:
    """``mmengine.runner.checkpoint._process_mmcls_checkpoint(checkpoint)``: the
    ``backbone.*`` weights of an mmcls checkpoint, without the prefix."""
    from mmengine.runner import checkpoint as mm_checkpoint

    return _read(mm_checkpoint, _CHECKPOINT, '_process_mmcls_checkpoint')(checkpoint)


# --------------------------------------------------------------------------
# The Runner and its training loop
# --------------------------------------------------------------------------
def runner_is_resuming(runner) -> bool:
    """Whether ``runner`` resumes (``runner._resume``: ``resume=True``, or a path for
    ``FlexibleRunner``)."""
    return bool(_runner_attribute(runner, '_resume'))


def runner_load_from(runner) -> Optional[str]:
    """``runner._load_from``: the ``load_from`` checkpoint, or None."""
    return _runner_attribute(runner, '_load_from')


def runner_randomness_cfg(runner) -> dict:
    """``runner._randomness_cfg``: the ``randomness`` settings (``seed``,
    ``diff_rank_seed``, ...) the runner was built with."""
    return _runner_attribute(runner, '_randomness_cfg')


def loop_dataloader_iterator(loop):
    """``loop.dataloader_iterator`` of an ``IterBasedTrainLoop``: the iterator
    ``run`` takes every batch from."""
    return _read(loop, 'mmengine.runner.IterBasedTrainLoop', 'dataloader_iterator')


def set_loop_dataloader_iterator(loop, iterator) -> None:
    """Make ``loop`` (an ``IterBasedTrainLoop``) take its batches from ``iterator``."""
    loop_dataloader_iterator(loop)  # never create an attribute run() would not read
    loop.dataloader_iterator = iterator


# --------------------------------------------------------------------------
# Config names ``package::path``
# --------------------------------------------------------------------------
class _ConfigPath:
    """``Config._get_cfg_path`` for every ``_base_`` entry: ``package::path`` of a
    package registered here is ``resolvers[package](path)``, without a scope; any
    other entry goes to mmengine's function (``fallback``)."""

    def __init__(self, fallback: Callable[[str, str], Tuple[str, Optional[str]]]):
        self.fallback = fallback
        self.resolvers: Dict[str, Callable[[str], str]] = {}

    def __call__(self, cfg_path: str, filename: str) -> Tuple[str, Optional[str]]:
        package, sep, path = cfg_path.partition('::')
        if sep and package in self.resolvers:
            return self.resolvers[package](path), None
        return self.fallback(cfg_path, filename)


def register_config_package(package: str, resolve: Callable[[str], str]) -> None:
    """Make ``_base_ = '<package>::<path>'`` in any config name the file
    ``resolve(path)`` (which raises ``FileNotFoundError`` for a name it does not
    have), read as a ``_base_`` given by its path is: the types in it are looked up
    in the config's default scope. Registering ``package`` again replaces its
    resolver."""
    from mmengine.config import Config

    get_cfg_path = _read(Config, 'mmengine.config.Config', '_get_cfg_path')
    if not isinstance(get_cfg_path, _ConfigPath):
        get_cfg_path = _ConfigPath(get_cfg_path)
        Config._get_cfg_path = staticmethod(get_cfg_path)
    get_cfg_path.resolvers[package] = resolve
