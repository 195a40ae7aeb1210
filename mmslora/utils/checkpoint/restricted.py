"""A pickle module for ``torch.load(..., pickle_module=...)`` that resolves only
allowlisted globals: the safe loader on a torch without
``torch.serialization.safe_globals`` (torch < 2.5).

Such a torch has ``torch.load(weights_only=True)`` with a fixed allowlist and no way
to extend it, so mmslora loads with this module instead. ``torch.load`` subclasses
its :class:`Unpickler` for the pickle of a zip archive (and of a legacy file) and
calls :meth:`Unpickler.find_class` for every global the pickle names, including the
callables of ``__reduce__`` reductions; :func:`load` reads a legacy file's headers.
:meth:`Unpickler.find_class` returns the object only for a name on torch's own
weights-only allowlist (:func:`~.allowlist.torch_default_globals`) or mmslora's
(:func:`~.allowlist.allowlisted_globals`), and raises
:class:`~.allowlist.NotAllowlisted` naming any other, before anything is imported or
called: a refused payload never runs.
"""

import pickle
from typing import Any, Dict

from .allowlist import NotAllowlisted, allowlisted_globals, global_name, torch_default_globals


def allowed_globals() -> Dict[str, Any]:
    """``{'dotted.path': object}`` that :class:`Unpickler` resolves: torch's default
    weights-only allowlist plus mmslora's (and what :func:`~.allowlist.allow_globals`
    added)."""
    allowed = dict(torch_default_globals())
    allowed.update((name, obj) for obj, name in allowlisted_globals())
    return allowed


class Unpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` whose globals come from :func:`allowed_globals`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._allowed = allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        path = global_name(module, name)
        try:
            return self._allowed[path]
        except KeyError:
            raise NotAllowlisted(
                f'the global {path} is not on the allowlist of torch weights-only '
                'loading and mmslora',
                [path],
            ) from None


def load(file, **kwargs) -> Any:
    """``pickle.load`` through :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()
