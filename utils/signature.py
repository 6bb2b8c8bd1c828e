"""Does a set of options fit a constructor? The one check behind option validation everywhere (archs, datasets,
losses, optimizers, schedulers), and the error type that carries its one-line answer to the user."""
from __future__ import annotations

import inspect


class OptionsError(ValueError):
    """A problem with an options file, reported to the user as one readable message (no traceback)."""


def signature_problem(obj: object, kwargs: dict, positional: tuple = ()) -> str | None:
    """Why ``obj(*positional, **kwargs)`` would fail to bind (unknown or missing options), or None if it binds."""
    signature = inspect.signature(obj)
    try:
        signature.bind(*positional, **kwargs)
        return None
    except TypeError:
        pass
    params = list(signature.parameters.values())[len(positional):]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    unknown = [k for k in kwargs if k not in names and not accepts_any]
    missing = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
               and p.name not in kwargs]
    parts = ([f'unknown option(s) {unknown}'] if unknown else []) + ([f'missing {missing}'] if missing else [])
    name = getattr(obj, '__name__', str(obj))
    return f"{name}: {'; '.join(parts) or 'arguments do not bind'}; it accepts {names}"
