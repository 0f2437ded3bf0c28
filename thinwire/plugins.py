"""User plug-ins: strategies, codecs and task kinds written outside thinwire.

A plug-in is named `package.module:Name` (an importable module) or `path/to/file.py:Name`. Naming
it in the run config (`--strategy`, `--codec`) is enough: every process of the run (the driver,
Ray simulation workers, served clients) resolves the same name, so importing the module there
registers whatever it defines (a codec class, a client task kind) before it is used.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_plugin_name(spec: str) -> bool:
    """True for `module:Name` / `file.py:Name` (Name an identifier, no `=`)."""
    mod, sep, rest = spec.partition(":")
    return bool(sep and mod and _IDENT.match(rest.partition(":")[0]))


def import_module(module: str):
    """Import a dotted module or a .py file (by path); ValueError with the reason otherwise."""
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"plug-in file {module!r} not found")
        name = "thinwire_plugin_" + re.sub(r"\W", "_", str(path))
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise ValueError(f"plug-in {module!r} failed to import: {type(e).__name__}: {e}") from None
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"plug-in module {module!r} cannot be imported ({e}); put it on PYTHONPATH "
                         "or name its file: path/to/file.py:Name") from None


def load_object(spec: str) -> Any:
    """`module:Name` -> the object."""
    if not is_plugin_name(spec):
        raise ValueError(f"{spec!r} is not a plug-in name; expected package.module:Name or path/file.py:Name")
    module, _, rest = spec.partition(":")
    name = rest.partition(":")[0]
    mod = import_module(module)
    try:
        return getattr(mod, name)
    except AttributeError:
        raise ValueError(f"plug-in module {module!r} has no {name!r}") from None


def absolute(spec: str) -> str:
    """A file plug-in name with its path made absolute (so Ray workers in other directories find it)."""
    if not is_plugin_name(spec):
        return spec
    module, sep, rest = spec.partition(":")
    if module.endswith(".py") or "/" in module:
        return str(Path(module).expanduser().resolve()) + sep + rest
    return spec


def load_run_plugins(cfg) -> None:
    """Import the user modules a run names (strategy, codec) so their classes and task kinds are
    registered in this process (a Ray worker, a served client) before any task runs."""
    for spec in (cfg.strategy, cfg.codec):
        if is_plugin_name(spec):
            import_module(spec.partition(":")[0])
