"""mmengine's checkpoint schemes, loading through :func:`~.loader.safe_torch_load`.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, and its
``http(s)://`` loader goes through ``torch.hub.load_state_dict_from_url``, which
still defaults to ``weights_only=False``: a downloaded checkpoint may run code.
The ``http(s)://`` loader here downloads into the same cache and loads the file with
:func:`~.loader.safe_torch_load`. :func:`install_safe_checkpoint_loading` (run by
``import mmslora``) registers the safe loaders below with mmengine's
``CheckpointLoader`` in place of mmengine's own, so ``load_checkpoint``,
``_load_checkpoint``, ``Runner(load_from=..., resume=...)``, inferencers and
``init_cfg=dict(type='Pretrained', ...)`` all use them. The private mmengine parts
this needs are reached through :mod:`mmslora.compat.mmengine`.
"""

import io
import os
import os.path as osp
from typing import Any, Callable, Dict, Optional

import torch

from mmslora.compat.mmengine import (
    mmengine_home,
    process_mmcls_checkpoint,
    replace_checkpoint_scheme,
)
from .loader import safe_torch_load, warn


# The functions are named ``load_from_*`` like mmengine's because
# CheckpointLoader logs ``name[10:]`` ("Loads checkpoint by local backend").
def load_from_local(filename, map_location=None):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_local``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def _hub_cached_file(url: str, model_dir: Optional[str]) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    from urllib.parse import urlparse

    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def _safe_load_url(url, model_dir=None, map_location=None, progress=True):
    """Download ``url`` into torch hub's cache unless it is there (as
    ``torch.hub.load_state_dict_from_url`` does), then load the file safely."""
    cached = _hub_cached_file(url, model_dir)
    if not osp.exists(cached):
        os.makedirs(osp.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, progress=progress)
    # Diagnose failures on the downloaded file, but name the URL too.
    return safe_torch_load(
        cached, map_location=map_location, name=f'{cached} (downloaded from {url})'
    )


def load_from_http(filename, map_location=None, model_dir=None, progress=None):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_http``.

    Same download/cache behaviour (torch hub cache; rank 0 downloads first in
    distributed runs), but the file is loaded weights-only with the allowlist.
    ``progress`` None shows a progress bar when standard input is a terminal.
    """
    if progress is None:
        progress = os.isatty(0)
    from mmengine.dist import get_dist_info

    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = _safe_load_url(filename, model_dir, map_location, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _safe_load_url(filename, model_dir, map_location, progress)
    return checkpoint


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_ceph``."""
    from mmengine.fileio import get_file_backend

    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return safe_torch_load(buffer, map_location=map_location, name=filename)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://name`` (or deprecated ``modelzoo://``) via the safe http loader."""
    from mmengine.runner import checkpoint as mm_ckpt

    if filename.startswith('modelzoo://'):
        warn('The URL scheme of "modelzoo://" is deprecated, please use "torchvision://" instead')
        model_name = filename[len('modelzoo://') :]
    else:
        model_name = filename[len('torchvision://') :]
    url = mm_ckpt.get_torchvision_models()[model_name]
    return load_from_http(url, map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://name`` / ``openmmlab://name`` via the safe loaders."""
    from mmengine.runner import checkpoint as mm_ckpt

    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    model_name = filename[len(prefix) :]
    deprecated = mm_ckpt.get_deprecated_model_names()
    if model_name in deprecated:
        warn(f'{prefix}{model_name} is deprecated in favor of {prefix}{deprecated[model_name]}')
        model_name = deprecated[model_name]
    model_url = mm_ckpt.get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_from_http(model_url, map_location=map_location)
    return load_from_local(osp.join(mmengine_home(), model_url), map_location)


def load_from_mmcls(filename, map_location=None):
    """``mmcls://name`` via the safe http loader."""
    from mmengine.runner import checkpoint as mm_ckpt

    model_name = filename[len('mmcls://') :]
    checkpoint = load_from_http(mm_ckpt.get_mmcls_models()[model_name], map_location=map_location)
    return process_mmcls_checkpoint(checkpoint)


_SCHEMES: Dict[Any, Callable] = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
}


def install_safe_checkpoint_loading() -> None:
    """Make mmengine's ``CheckpointLoader`` load through :func:`safe_torch_load`.

    Replaces the local-file, http(s), s3/petrel, torchvision/modelzoo,
    open-mmlab and mmcls schemes (every mmengine scheme that reads a torch file,
    except ``pavi://``, whose plain ``torch.load`` is weights-only by default on
    torch >= 2.6 and so refuses rather than runs anything). Idempotent; other
    registered schemes (e.g. ``efficientnet-lite0://``) are left alone.
    """
    for prefixes, loader in _SCHEMES.items():
        for prefix in prefixes if isinstance(prefixes, tuple) else (prefixes,):
            replace_checkpoint_scheme(prefix, loader)
