"""Typed-config machinery shared by every section config.

Each section (model, dfm, data, training, telemetry, checkpoint) is a dataclass that lives next
to the code it configures. Fields are declared with :func:`doc` so every field carries a
docstring (shown by ``pretrain_dfm.py --help-config``). :func:`build` turns a plain dict (from
YAML plus ``--set`` overrides) into a dataclass, checking unknown keys and types, and rewrites
every error so it names the key, the file (or the ``--set`` flag) it came from and what is
expected.

A field whose allowed values come from a :class:`megadfm.registry.Registry` declares
``doc(default, help, choices=REGISTRY)`` (or a tuple of registries, whose keys together are
allowed) and is annotated ``str``. The section's ``__post_init__`` calls :func:`check_choices`,
so a bad value fails at construction, from YAML or from Python alike; :func:`describe` lists the
registered keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from megadfm.registry import Registry

Choices = Union[Registry, Sequence[Registry]]


class ConfigError(ValueError):
    """One configuration problem: which key, where it came from, what is expected."""

    def __init__(self, key: str, message: str, source: Optional[str] = None):
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key '{key}': {message}")

    def within(self, prefix: str, source: Optional[str]) -> "ConfigError":
        """The same error seen from an enclosing section (key gets the section prefix)."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.message, self.source or source)


def load_yaml_unique(stream: Any, source: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently).

    The document is composed to nodes first so the error can name the dotted key and both line numbers;
    YAML syntax errors propagate as ``yaml.YAMLError`` for the caller to word.
    """
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_unique_keys(node: Any, prefix: str, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: Dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":  # "<<" is a merge key, not a real entry
                if key in first_line:
                    raise ConfigError(dotted, f"given twice (lines {first_line[key]} and {line}); "
                                              "PyYAML would silently keep the last one: delete one of them", source)
                first_line[key] = line
            _check_unique_keys(value_node, dotted, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{prefix}[{i}]", source)


def doc(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
        choices: Optional[Choices] = None, tags: Sequence[str] = ()) -> Any:
    """A dataclass field with a docstring. ``factory`` builds mutable defaults; ``choices`` is the
    registry (or registries) whose keys are the field's allowed values (checked by :func:`check_choices`)."""
    if not help:
        raise TypeError("every config field needs a help string")
    metadata = {"doc": help} if choices is None else {"doc": help, "choices": choices}
    if tags:  # marks that code derives field lists from (fields_tagged), e.g. ModelConfig's "architecture"
        metadata["tags"] = tuple(tags)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def choice_keys(choices: Choices) -> List[str]:
    """Allowed values of a ``choices`` field: the keys of its registry, or of its registries in order."""
    registries = [choices] if isinstance(choices, Registry) else list(choices)
    return [key for registry in registries for key in registry.keys()]


def check_choices(obj: Any) -> None:
    """Raise a ConfigError for the first field of dataclass ``obj`` whose value is not one of its ``choices``."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is None:
            continue
        allowed = choice_keys(choices)
        value = getattr(obj, f.name)
        if value not in allowed:
            raise ConfigError(f.name, f"unknown value {value!r}; allowed values: {', '.join(allowed)}")


def fields_tagged(cls: type, tag: str) -> tuple:
    """Names of the fields of dataclass ``cls`` declared with ``doc(..., tags=(tag, ...))``, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if tag in f.metadata.get("tags", ()))


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds (used in __post_init__)."""
    if not condition:
        raise ConfigError(key, message)


def field_docs(cls: type) -> Dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, origins: Mapping[str, str], default_source: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form."""
    source = origins.get(key, default_source)
    origin = typing.get_origin(tp)

    def bad() -> ConfigError:
        return ConfigError(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})", source)

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise bad()
        return build(tp, value, key, origins, default_source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, origins, default_source)
            except ConfigError as e:  # try the next alternative of the union; all failing is reported
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise bad()
    if origin is typing.Literal:
        # compare types too: YAML's `true` must not match a Literal 1
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise bad()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", origins, default_source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", origins, default_source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "3e-4" (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise ConfigError(key, f"unsupported annotation {tp!r} (a bug in the config class)", source)


def build(cls: type, data: Mapping[str, Any], prefix: str = "", origins: Optional[Mapping[str, str]] = None,
          default_source: str = "<dict>") -> Any:
    """Build dataclass ``cls`` from ``data``; every error names the dotted key and its source."""
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(full, f"unknown key for {cls.__name__}; valid keys are: {', '.join(sorted(names))}",
                              origins.get(full, default_source))
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], full, origins, default_source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if e.source is not None:
            raise
        full = f"{prefix}.{e.key}" if prefix else e.key
        raise ConfigError(full, e.message, origins.get(full, default_source)) from None


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (lists, dicts, scalars) suitable for YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type, prefix: str = "") -> str:
    """Human-readable listing of every field, its type, default and docstring."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{key}:  ({tp.__name__}) {f.metadata.get('doc', '')}")
            lines.append(describe(tp, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(to_dict(f.default_factory()))  # type: ignore[misc]
        else:
            default = "(required)"
        choices = f.metadata.get("choices")
        kind = _type_name(tp) if choices is None else "one of " + ", ".join(repr(k) for k in choice_keys(choices))
        lines.append(f"{key} = {default}  [{kind}]\n    {f.metadata.get('doc', '')}")
    return "\n".join(lines)
