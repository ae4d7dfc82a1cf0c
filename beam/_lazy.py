"""
Public names loaded on first use (PEP 562), for package C{__init__}s.

C{beam}, C{beam.tunnel} and C{beam.daemon.control} re-export names from
their submodules, but a command must not pay for what it does not use
(C{beam PORT} never needs the forward's Automat machine, C{beam connect}
the control socket's HTTP client unless a node already runs).  Each of them
builds its module-level C{__getattr__} and C{__dir__} here.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable, Mapping


def lazyExports(module: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """
    The C{__getattr__} and C{__dir__} of C{module}.

    @param where: each public name and the module defining it, absolute or
        relative to C{module} (C{".client"}); a name mapped to the submodule
        of the same name is that submodule.  A name, once loaded, is stored
        in C{module}'s namespace, so it is looked up only once.
    """
    namespace = sys.modules[module].__dict__

    def __getattr__(name: str) -> Any:
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if source.startswith("."):
            source = module + source
        loaded = import_module(source)
        value = loaded if source == f"{module}.{name}" else getattr(loaded, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
