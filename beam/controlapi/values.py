"""
Status values as JSON and back: one generic rendering for every service.

A status value is a frozen L{attrs} class whose fields hold JSON's own
kinds (C{str}, C{int}, C{float}, C{bool}, L{None}), tuples of them, or
other status values.  Its JSON object has one key per field: the field's
name in snake case (C{peerID} -> C{"peer_id"}, C{routingTableSize} ->
C{"routing_table_size"}), or the key given with L{jsonField} where an
older JSON shape must be kept.

L{asJSON} is strict: a field holding anything else (a L{PeerID}, a
L{Multiaddr}) raises L{TypeError}, so a status value cannot leak an object
whose text form is undecided; convert when building the value.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, TypeVar, Union

import attrs

from beam.errors import BeamError

__all__ = ["asJSON", "fromJSON", "jsonField", "jsonKey"]

T = TypeVar("T")

_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def jsonField(key: str, **kw: Any) -> Any:
    """
    An L{attrs.field} whose JSON key is C{key} instead of the snake-case
    form of its name (for JSON shapes that predate the value).
    """
    metadata = dict(kw.pop("metadata", {}) or {})
    metadata["json"] = key
    return attrs.field(metadata=metadata, **kw)


def jsonKey(attribute: attrs.Attribute) -> str:
    """
    The JSON key of an attrs field.
    """
    explicit = attribute.metadata.get("json")
    if explicit:
        return str(explicit)
    return _HUMP.sub("_", attribute.name).lower()


def asJSON(value: Any) -> Any:
    """
    C{value} (a status value, a tuple or list of them, a dict with string
    keys, or a JSON scalar) as plain JSON-able data.

    @raise TypeError: something in it has no JSON form.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError("NaN and infinities have no JSON form")
        return value
    if attrs.has(type(value)):
        return {jsonKey(a): asJSON(getattr(value, a.name)) for a in attrs.fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [asJSON(item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            out[key] = asJSON(item)
        return out
    raise TypeError(f"{type(value).__name__} has no JSON form; convert it when building the status value")


class UnreadableStatus(BeamError):
    """
    The node's answer does not have the expected shape.
    """


def fromJSON(cls: type[T], data: Any) -> T:
    """
    Rebuild a status value of class C{cls} from what L{asJSON} made of
    one.  Keys the class does not know are ignored (a newer node may send
    more); missing keys take the field's default.

    @raise UnreadableStatus: C{data} does not fit C{cls}.
    """
    return _convert(cls, data, cls.__name__)


def _convert(kind: Any, data: Any, where: str) -> Any:
    if kind is Any:
        return data
    if isinstance(kind, type) and attrs.has(kind):
        if not isinstance(data, dict):
            raise UnreadableStatus(f"{where}: expected an object, not {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        kwargs = {}
        for a in attrs.fields(kind):
            key = jsonKey(a)
            if key in data:
                kwargs[a.name] = _convert(hints.get(a.name, Any), data[key], f"{where}.{key}")
            elif a.default is attrs.NOTHING:
                raise UnreadableStatus(f"{where}: missing {key!r}")
        return kind(**kwargs)
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1:
            return _convert(choices[0], data, where)
        return data
    if origin in (tuple, list):
        if not isinstance(data, list):
            raise UnreadableStatus(f"{where}: expected a list, not {type(data).__name__}")
        itemKind = args[0] if args else Any
        items = [_convert(itemKind, item, f"{where}[{i}]") for i, item in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            raise UnreadableStatus(f"{where}: expected an object, not {type(data).__name__}")
        valueKind = args[1] if len(args) == 2 else Any
        return {k: _convert(valueKind, v, f"{where}.{k}") for k, v in data.items()}
    if kind is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(kind, type) and kind in (str, int, float, bool) and not isinstance(data, kind):
        raise UnreadableStatus(f"{where}: expected {kind.__name__}, not {type(data).__name__}")
    return data
