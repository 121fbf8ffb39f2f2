"""Method settings from text: ``--set METHOD.FIELD=VALUE`` and tuned-settings files.

Every setting of a method is a dataclass field (see :mod:`workbench.methods`), so the
command line can reach all of them the same way::

    workbench bench --methods dps,fints --set dps.alpha=0.5 --set fints.layer=18

A combination's parts are reached through them: ``--set caa-all+dps.steering.scale=2``.
Values are read by the field's type (``int``, ``float``, ``bool``, ``str``, ``X | None``
with ``none``, and ``Any`` fields such as DPS's ``alpha``: a number, or a word such as
``entropy``); an unknown method or field, or a value of the wrong type, is a clear error
before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

_NONE = ("none", "null")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def parse_method_names(text: str) -> list[str]:
    """``"generic, rag"`` -> ``["generic", "rag"]`` (``--methods``); an empty list is an error."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError("--methods is empty; name at least one method, e.g. --methods generic,rag")
    return names


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["dps.alpha=0.5", "fints.layer=18"]`` -> ``{"dps": {"alpha": "0.5"}, "fints": {"layer": "18"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, field = key.strip().partition(".")
        if not eq or not dot or not method or not field:
            raise ValueError(f"--set {item!r}: write METHOD.FIELD=VALUE, e.g. --set dps.alpha=0.5")
        if field in out.get(method, {}):
            raise ValueError(f"--set gives {method}.{field} twice; give each setting once")
        out.setdefault(method, {})[field] = value.strip()
    return out


def settable_fields(method: Any) -> dict[str, dataclasses.Field]:
    """The fields of a method that ``--set`` can change (all but the run's shared settings)."""
    return {f.name: f for f in dataclasses.fields(method) if f.name != "settings"}


def _coerce(value: str, annotation: Any, where: str) -> Any:
    kinds = [k.strip() for k in str(annotation).replace("typing.", "").split("|")]
    text = value.strip()
    if "None" in kinds and text.lower() in _NONE:
        return None
    kinds = [k for k in kinds if k != "None"]
    problems = []
    for kind in kinds:
        try:
            if kind == "bool":
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError("not true/false")
            if kind == "int":
                try:
                    return int(text)
                except ValueError:
                    x = float(text)  # "8.0": how tuned.json records a fixed setting
                    if not x.is_integer():
                        raise
                    return int(x)
            if kind == "float":
                x = float(text)
                if not math.isfinite(x):
                    raise ValueError("not finite")
                return x
            if kind == "str":
                return text
            if kind == "Any":
                try:
                    x = float(text)
                except ValueError:
                    return text
                if not math.isfinite(x):
                    raise ValueError("not finite")
                return int(x) if x.is_integer() and "." not in text and "e" not in text.lower() else x
        except ValueError as e:
            problems.append(f"{kind} ({e})")
    names = {"Any": "a finite number or a word (e.g. entropy)", "int": "a whole number", "float": "a finite number",
             "bool": "true or false", "str": "text"}
    expected = " or ".join(names.get(k, k) for k in kinds) + (" or none" if "None" in str(annotation) else "")
    raise ValueError(f"{where}={value!r}: expected {expected}")


def apply_settings(method: Any, changes: Mapping[str, Any], prefix: str | None = None) -> Any:
    """Set ``changes`` (field -> text or value) on ``method``; nested keys (``steering.scale``)
    reach a combination's parts. Returns the method. Raises a ValueError naming the known fields
    for an unknown one, and the expected type for a bad value."""
    name = prefix or method.name
    fields = settable_fields(method)
    parts = {p: getattr(method, p) for p in ("steering", "decoding") if hasattr(method, p)}
    for key, value in changes.items():
        head, dot, rest = key.partition(".")
        if dot:
            if head not in parts:
                raise ValueError(f"{name}.{key}: {name} has no part {head!r}"
                                 + (f" (parts: {sorted(parts)})" if parts else ""))
            apply_settings(parts[head], {rest: value}, f"{name}.{head}")
            continue
        if key not in fields:
            known = sorted(fields) + [f"{p}.<field>" for p in parts]
            raise ValueError(f"{name} has no setting {key!r}; its settings are: {', '.join(known)}")
        typed = _coerce(value, fields[key].type, f"{name}.{key}") if isinstance(value, str) else value
        setattr(method, key, typed)
        if key == "heads_file" and "decoding" in parts:  # a combination hands its heads to its decoder
            parts["decoding"].heads_file = typed
    check = getattr(method, "__post_init__", None)
    if check is not None and not parts:
        check()  # the method's own checks of its settings (e.g. a steering method's ``on``)
    if hasattr(method, "check_settings"):
        method.check_settings()  # every declared range (workbench.methods.Check), naming METHOD.FIELD
    return method


def apply_all(methods: list, changes: Mapping[str, Mapping[str, Any]]) -> list:
    """Apply ``{method: {field: value}}`` to the methods of a run; a name that is not one of
    them is an error (a typo would otherwise be ignored silently)."""
    by_name = {m.name: m for m in methods}
    unknown = [n for n in changes if n not in by_name]
    if unknown:
        raise ValueError(f"--set names method(s) {unknown} that are not in this run ({sorted(by_name)}); "
                         "add them to --methods or fix the name")
    for name, fields in changes.items():
        apply_settings(by_name[name], fields)
    return methods
