"""Configuration: one YAML file with named profiles, plus environment overrides, validated on load.

``load_config()`` merges the ``local`` profile (the base every other profile extends) with the
chosen profile, then applies ``PIPELINE__A__B=value`` environment variables (``a.b = value``;
values are parsed as YAML scalars, so ``3`` is an int and ``true`` a bool). The profile comes
from the argument, else ``PIPELINE_PROFILE``, else ``local``.

Every layer is validated as it is applied, so a mistake fails at once and says where it is:

- **The ``local`` profile is the schema.** Every key the pipeline reads is present there; its
  value there is the default and its type the type (an int is accepted where a float is
  expected). A key missing from ``local`` is unknown, in any profile or variable.
- A ``null`` in ``local`` means "optional"; its type when set comes from :data:`NULLABLE_TYPES`
  (a null key not listed there takes any scalar).
- Free-form maps (:data:`OPEN_MAPS`, e.g. ``spark.conf``: any Spark setting) take any key.
- :data:`OVERLAYS`: a section that takes any key of another section (``export.generate``
  overrides keys of ``aigq.generate``); :data:`OPTIONAL_KEYS`: keys valid but absent by default,
  because their absence means something (a default derived from another key).

Errors are :class:`ConfigError` (a ``ValueError``) naming the dotted key and its origin: the config
file and profile, or the environment variable. :func:`config_schema` returns the schema (type,
default, comment of each key) for tools such as a configuration reference generator;
:func:`validate_config` checks a config dict against it.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "pipeline.yaml"
BASE_PROFILE = "local"
ENV_PREFIX = "PIPELINE__"

#: Keys ``load_config`` adds to the merged config; never read from a file or variable.
RESERVED_KEYS = ("profile", "config_path")
#: Keys that take ``null`` (their ``local`` default, or an explicit "off"): the type of a value when set.
NULLABLE_TYPES: dict[str, type] = {
    "karma.base_model": str,
    "aigq.base_model": str,
    "aigq.generate.seed": int,
    "ops.etl_schedule": str,  # a cron string; null = no schedule
    "ops.alert_command": str,
}
#: Maps whose keys are free-form (values: any YAML scalar, list or map).
OPEN_MAPS: frozenset[str] = frozenset({"spark.conf"})
#: ``section: (source section, keys of the source it does not take)``: the section takes any key
#: of the source section (same type), on top of its own keys in ``local``.
OVERLAYS: dict[str, tuple[str, frozenset[str]]] = {
    "export.generate": ("aigq.generate", frozenset({"blocklist"})),  # export.blocklist is separate
}
#: Keys that are valid but absent from ``local`` (absence means something): ``key: (type, comment)``.
OPTIONAL_KEYS: dict[str, tuple[type, str]] = {
    "export.lookback_days": (int, "sample days the export reads behaviour history from; default samples.lookback_days"),
}

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}
_ITEM_NAMES = {bool: "booleans", int: "integers", float: "numbers", str: "strings", dict: "mappings"}


class ConfigError(ValueError):
    """A config file, profile or override is invalid."""


@dataclass(frozen=True)
class Setting:
    """One key of the schema.

    ``kind``: ``section`` (a map of known keys), ``open`` (a free-form map) or ``value``.
    ``type``: of a value (``bool``, ``int``, ``float``, ``str``, ``list``; ``None`` = any scalar);
    ``item_type``: of a list's items when the default list shows it. ``default``: the ``local``
    value (``None`` for optional keys, see ``required``). ``doc``: the comment next to the key in
    the config file (continuation comment lines included).
    """

    path: str
    kind: str
    type: type | None = None
    item_type: type | None = None
    nullable: bool = False
    required: bool = True
    default: Any = None
    doc: str = ""

    @property
    def type_name(self) -> str:
        if self.kind != "value":
            return "a mapping"
        if self.type is None:
            name = "a scalar"
        elif self.type is list and self.item_type is not None:
            name = f"a list of {_ITEM_NAMES.get(self.item_type, self.item_type.__name__)}"
        else:
            name = _TYPE_NAMES.get(self.type, self.type.__name__)
        return f"{name} or null" if self.nullable else name


Schema = dict[str, Setting]


# --- schema -----------------------------------------------------------------------------------
def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _value_type(value: Any) -> type | None:
    for t in (bool, int, float, str, list):
        if isinstance(value, t):
            return t
    return None


def build_schema(local: dict, docs: dict[str, str] | None = None) -> Schema:
    """The schema of a ``local`` profile (see the module docstring); ``docs``: comments by key."""
    docs = docs or {}
    schema: Schema = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = _join(prefix, key)
            doc = docs.get(path, "")
            if path in OPEN_MAPS:
                schema[path] = Setting(path, "open", default=copy.deepcopy(value), doc=doc)
            elif isinstance(value, dict):
                schema[path] = Setting(path, "section", doc=doc)
                walk(value, path)
            elif value is None:
                schema[path] = Setting(path, "value", NULLABLE_TYPES.get(path), nullable=True, doc=doc)
            else:
                vtype = _value_type(value)
                item_type = None
                if vtype is list and value:
                    item_types = {_value_type(v) if not isinstance(v, dict) else dict for v in value}
                    item_type = item_types.pop() if len(item_types) == 1 else None
                schema[path] = Setting(path, "value", vtype, item_type, nullable=path in NULLABLE_TYPES,
                                       default=copy.deepcopy(value), doc=doc)

    walk(local, "")
    for path, (vtype, doc) in OPTIONAL_KEYS.items():
        if path not in schema and schema.get(_parent(path), Setting("", "")).kind == "section":
            schema[path] = Setting(path, "value", vtype, required=False, doc=docs.get(path) or doc)
    for target, (source, excluded) in OVERLAYS.items():
        if schema.get(target, Setting("", "")).kind != "section":
            continue
        for path, setting in list(schema.items()):
            if not path.startswith(source + "."):
                continue
            rest = path[len(source) + 1 :]
            if rest.split(".")[0] in excluded or _join(target, rest) in schema:
                continue
            schema[_join(target, rest)] = Setting(
                _join(target, rest), setting.kind, setting.type, setting.item_type, setting.nullable,
                required=False, doc=f"overrides {path}" + (f": {setting.doc}" if setting.doc else ""),
            )
    return schema


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:'\"][^:#]*?):(?:\s+(?P<rest>.*))?$")


def _profile_comments(text: str, profile: str = BASE_PROFILE) -> dict[str, str]:
    """``{dotted key: comment}`` of one profile of a config file: the ``# ...`` after each key,
    plus comment lines right below it indented deeper than the key (a continued comment)."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    profile_indent: int | None = None
    last: tuple[int, str] | None = None  # (indent, path) of the last key line
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if stripped.startswith("- "):
            continue
        if stripped.startswith("#"):
            if last is not None and indent > last[0] and profile_indent is not None:
                docs[last[1]] = (docs.get(last[1], "") + " " + stripped.lstrip("#").strip()).strip()
            continue
        last = None
        m = _KEY_LINE.match(raw)
        if not m:
            continue
        key, rest = m["key"].strip(), m["rest"] or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        keys = [k for _i, k in stack]
        if profile_indent is None:
            if keys == ["profiles", profile]:
                profile_indent = indent
            continue
        if indent <= profile_indent:
            break
        path = ".".join(keys[2:])
        comment = re.search(r"(?:^|\s)#\s?(.*)$", rest)
        if comment:
            docs[path] = comment[1].strip()
        last = (indent, path)
    return docs


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' given twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_doc(path: Path) -> tuple[dict, str]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    profiles = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(profiles, dict) or not isinstance(profiles.get(BASE_PROFILE), dict):
        raise ConfigError(f"{path}: needs a 'profiles' mapping with a '{BASE_PROFILE}' profile")
    return profiles, text


def config_schema(path: str | os.PathLike | None = None) -> Schema:
    """The schema of a config file (default: conf/pipeline.yaml), in file order, with comments."""
    path = Path(path or DEFAULT_CONFIG)
    profiles, text = _read_doc(path)
    return build_schema(profiles[BASE_PROFILE], _profile_comments(text))


# --- validation -------------------------------------------------------------------------------
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_error(where: str, setting: Setting, value: Any) -> ConfigError:
    got = "null" if value is None else f"{type(value).__name__} {_short(value)}"
    hint = ""
    if setting.type is str and type(value).__name__ in ("date", "datetime"):
        hint = " (quote it)"
    return ConfigError(f"{where}: '{setting.path}' must be {setting.type_name}, got {got}{hint}")


def _type_ok(expected: type | None, value: Any) -> bool:
    if expected is None:
        return isinstance(value, (str, int, float, bool))
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _unknown(where: str, path: str, schema: Schema) -> ConfigError:
    parent = _parent(path)
    siblings = [p.rpartition(".")[2] for p, s in schema.items() if _parent(p) == parent]
    close = difflib.get_close_matches(path.rpartition(".")[2], siblings, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{_join(parent, close[0])}'?"
    else:
        hint = f"known keys of {repr(parent) if parent else 'the top level'}: {', '.join(siblings)}"
    return ConfigError(f"{where}: unknown key '{path}' ({hint})")


def _in_open_map(path: str, schema: Schema) -> bool:
    parent = _parent(path)
    while parent:
        setting = schema.get(parent)
        if setting is not None:
            return setting.kind == "open"
        parent = _parent(parent)
    return False


def _check(value: Any, path: str, schema: Schema, where: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is valid at ``path``."""
    setting = schema.get(path)
    if setting is None:
        if _in_open_map(path, schema):
            return
        raise _unknown(where, path, schema)
    if setting.kind in ("section", "open"):
        if not isinstance(value, dict):
            raise _type_error(where, setting, value)
        if setting.kind == "section":
            for key, sub in value.items():
                _check(sub, _join(path, key), schema, where)
        return
    if value is None:
        if not setting.nullable:
            raise _type_error(where, setting, value)
        return
    if not _type_ok(setting.type, value):
        raise _type_error(where, setting, value)
    if setting.type is list and setting.item_type is not None:
        bad = [v for v in value if not _type_ok(setting.item_type, v)]
        if bad:
            raise ConfigError(f"{where}: '{path}' must be {setting.type_name}, got {_short(bad[0])} in {_short(value)}")


def validate_config(cfg: dict, schema: Schema | None = None, where: str = "config") -> dict:
    """Check a (merged) config dict against ``schema`` (default: the schema of the file named by
    ``cfg['config_path']``, else conf/pipeline.yaml); returns ``cfg``, raises :class:`ConfigError`
    naming the first bad key. ``where`` prefixes the message (the origin of ``cfg``)."""
    if schema is None:
        schema = config_schema(cfg.get("config_path") or None)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a config must be a mapping, got {type(cfg).__name__}")
    for key, value in cfg.items():
        if key not in RESERVED_KEYS:
            _check(value, str(key), schema, where)
    return cfg


# --- loading ----------------------------------------------------------------------------------
def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env_value(raw: str, setting: Setting | None) -> Any:
    """An override's value: a YAML scalar, kept as the raw text where the key is a string (so
    ``2026-11-01`` or ``4g`` stay text) and read as a float where a number is expected (``1e-5``)."""
    value = yaml.safe_load(raw) if raw != "" else ""
    if setting is None or setting.kind != "value" or value is None:
        return value
    if setting.type is str and not isinstance(value, str):
        return raw
    if setting.type is float and isinstance(value, str):
        try:
            return float(raw)
        except ValueError:
            return value
    return value


def _apply_env(cfg: dict, environ: dict[str, str], schema: Schema) -> dict:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        where = f"environment variable {name}"
        path = ".".join(keys)
        if path in RESERVED_KEYS:
            raise ConfigError(f"{where}: '{path}' is set by load_config (use PIPELINE_{path.upper()})")
        for i in range(1, len(keys)):  # every enclosing key must be a section or a free-form map
            head = ".".join(keys[:i])
            setting = schema.get(head)
            if setting is None and not _in_open_map(head, schema):
                raise _unknown(where, head, schema)
            if setting is not None and setting.kind == "value":
                raise ConfigError(f"{where}: '{head}' is {setting.type_name}, not a section")
        if path not in schema and not _in_open_map(path, schema):
            raise _unknown(where, path, schema)
        try:
            value = _env_value(raw, schema.get(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not a YAML value: {raw!r} ({exc})") from exc
        _check(value, path, schema, f"{where}={raw!r}" if len(raw) <= 60 else where)
        node = cfg
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return cfg


def load_config(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return the merged config dict for ``profile`` with env overrides applied, validated
    (:class:`ConfigError` on an unknown key or a wrong type, naming the file + profile or the
    environment variable it came from)."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG)
    profiles, text = _read_doc(path)
    profile = profile or environ.get("PIPELINE_PROFILE") or BASE_PROFILE
    if profile not in profiles:
        raise ConfigError(f"{path}: unknown profile '{profile}' (have: {sorted(profiles)})")
    local = profiles[BASE_PROFILE]
    schema = build_schema(local)
    cfg = copy.deepcopy(local)
    for name in dict.fromkeys([BASE_PROFILE, profile]):
        layer = profiles[name] or {}
        where = f"{path}, profile '{name}'"
        if not isinstance(layer, dict):
            raise ConfigError(f"{where}: a profile must be a mapping, got {type(layer).__name__}")
        for key in RESERVED_KEYS:
            if key in layer:
                raise ConfigError(f"{where}: '{key}' is set by load_config, not by the file")
    if profile != BASE_PROFILE:
        layer = profiles[profile] or {}
        validate_config(layer, schema, f"{path}, profile '{profile}'")
        cfg = _deep_merge(cfg, layer)
    cfg = _apply_env(cfg, environ, schema)
    cfg["profile"] = profile
    cfg["config_path"] = str(path)
    root = Path(str(cfg.get("data_root", "data")))
    if "://" not in str(cfg.get("data_root", "")) and not root.is_absolute():
        root = REPO_ROOT / root
    cfg["data_root"] = str(root)
    return cfg
