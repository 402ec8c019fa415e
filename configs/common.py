"""Helpers shared by the config files (big_vision style).

A config file defines `get_config(arg: str | None = None) -> ml_collections.ConfigDict`. The string
after the colon in `--config=configs/x.py:smoke,seed=3` reaches `get_config` as `arg`; parse it with
`parse_arg`. Individual fields are overridden on the command line with `--config.optim.lr=1e-3`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _cast(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"config arg {key!r}: expected a boolean, got {text!r}")
    if default is None or isinstance(default, str):
        return text
    try:
        return type(default)(text)
    except ValueError as err:
        raise ValueError(f"config arg {key!r}: cannot read {text!r} as {type(default).__name__}") from err


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config string argument such as ``"smoke"`` or ``"smoke,seed=3,zoo=minizoo"``.

    Every accepted key must be declared in ``defaults``; its default fixes the type. A bare key sets a
    boolean to True. Unknown keys raise ``ValueError`` so that typos never pass silently.

    Returns:
      A locked-type ConfigDict with one field per declared key.
    """
    values = dict(defaults)
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        key, sep, text = token.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
        if not sep:
            if not isinstance(defaults[key], bool):
                raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
            values[key] = True
        else:
            values[key] = _cast(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)
