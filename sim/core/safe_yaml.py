"""Reading user YAML files (scenarios, sweeps, cohorts) without surprises.

Every problem becomes a :class:`~sim.core.errors.ConfigError` of one line naming the file, and the
key path (dotted, as written) where the YAML itself is at fault. What is refused, and why:

- anything but a regular file (a named pipe would block forever, a device never ends), files over
  :data:`MAX_FILE_BYTES`, unreadable files and folders, over-long names, bytes that are not UTF-8;
- a key repeated in one mapping (YAML parsers silently keep the last one);
- tags other than the plain JSON-like ones (``!!binary``, ``!!set``, ``!!timestamp``, ``!!python/...``,
  custom ``!tags``): only strings, numbers, booleans, null, lists and mappings mean anything here;
- integers longer than :data:`MAX_INT_DIGITS` digits (Python refuses to convert 4,300+ digits, and
  no field takes more than 19);
- nesting deeper than :data:`MAX_DEPTH` (checked while composing, before any recursion can overflow);
- aliases that expand to more than :data:`MAX_NODES` values (an "alias bomb" of a few lines can
  stand for billions) and recursive aliases: counted on the composed graph, where every alias is
  one shared node, so the count costs time linear in the file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sim.core.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: scenarios are a few kB, the largest sweep files a few 10 kB
MAX_DEPTH = 32  # a scenario is 3 levels deep, a cohort file 6
MAX_NODES = 200_000  # values after alias expansion
MAX_INT_DIGITS = 40

_TAG = "tag:yaml.org,2002:"
ALLOWED_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_LITERAL_TAGS = {_TAG + t for t in ("int", "float", "bool", "null")}

# The text as written of every plain number, boolean and null, by key path (keys and list indices), with the
# value it was read as: error messages print a user's `0.0010`, `7.50e+1` or `1e999` as written, not as the
# parsed 0.001, 75.0 or Infinity.
Literals = dict[tuple[str | int, ...], tuple[str, Any]]


class _Refused(Exception):
    """Raised inside the loader; turned into a ConfigError with the file name by :func:`load_yaml_text`."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH while composing (no deep recursion)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        # index is the key node of a mapping value, the position in a sequence, None for keys/root
        label = (
            index.value if isinstance(index, ScalarNode) else str(index) if isinstance(index, int) else "?"
        )
        self._path.append(label)
        try:
            if len(self._path) > MAX_DEPTH:
                shown = ".".join(self._path[1:5]) + "..."
                raise _Refused(
                    f"{shown}: nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_scalar_node(self, anchor: Any) -> Node:  # type: ignore[override]
        event = self.peek_event()
        node = super().compose_scalar_node(anchor)
        if event.tag not in (None, "!"):  # a tag the user wrote (`!!int '7'`), not one resolved from the text
            node.written_tag = event.tag  # type: ignore[attr-defined]
        return node


# A tag written on a scalar turns text into another type (`!!int '010'` is 8, `!!bool 'on'` true), past the
# rules for quoted numbers, switches and YAML 1.1 numbers: a value is written as what it is.
_TYPED_SCALAR_TAGS = {_TAG + t for t in ("int", "float", "bool", "null")}

# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent, so `4e-8`, `7.5e4` and `1E5` came
# through as strings; YAML 1.2's core schema reads them as numbers, as every user expects. Resolved for
# this loader only (PyYAML copies the resolver table to the subclass).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_BoundedLoader.add_implicit_resolver(_TAG + "float", _EXPONENT_FLOAT, list("-+0123456789."))


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _where(mark: Any) -> str:
    return f" ({_line(mark)})" if mark is not None else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def key_text(key: Any) -> str:
    """A mapping key or location part as the file wrote it: YAML's `null:` / `true:` are None / True here."""
    if key is None:
        return "null"
    if isinstance(key, bool):
        return str(key).lower()
    return str(key)


def bytes_as_escapes(text: str) -> str:
    """Bytes of a path that are not UTF-8 (kept by Python as surrogates, printed `\\udcff`) as the file
    system has them (`\\xff`)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def path_label(path: str | os.PathLike[str]) -> str:
    """A path as it names a file in a one-line message: control characters (a newline in a file name broke
    the message in two) and bytes that are not UTF-8 written as escapes (``\\n``, ``\\xff``)."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in bytes_as_escapes(text))


def shown_text(text: str, limit: int = 40) -> str:
    """Text as written, a long one cut to its head and tail with its length."""
    return text if len(text) <= limit else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def _expanded_size(root: Node) -> int:
    """Number of values the node graph stands for once aliases are expanded; refuses cycles."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise _Refused("a recursive alias (a node that contains itself)", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        memo[key] = min(total, MAX_NODES + 1)
        return memo[key]

    return size(root)


def _check_nodes(root: Node) -> None:
    """Duplicate keys, tags and integer lengths, each node once (aliases are not re-walked)."""
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        here = path or "(top level)"
        if node.tag not in ALLOWED_TAGS:
            tag = node.tag.replace(_TAG, "!!")
            if tag == "!!timestamp":
                raise _Refused(f"{here}: a date or time is not a value here (quote it to make it text)")
            raise _Refused(
                f"{here}: tag '{tag}' is not allowed (allowed: plain strings, numbers, booleans, null, "
                "lists and mappings)",
                node.start_mark,
            )
        if isinstance(node, ScalarNode):
            if getattr(node, "written_tag", None) in _TYPED_SCALAR_TAGS:
                tag = node.tag.replace(_TAG, "!!")
                quoted = f"{node.style}{node.value}{node.style}" if node.style in ("'", '"') else node.value
                raise _Refused(
                    f"{here} = {tag} {shown_text(quoted)}: a tag that makes a value a number, a switch or "
                    "null is not allowed; write the value itself (a number unquoted, true / false, null)",
                    node.start_mark,
                )
            if node.style is None and node.tag in (_TAG + "int", _TAG + "float"):
                _refuse_yaml11_number(here, node)
            if node.style is None and node.tag == _TAG + "float":
                _refuse_underflow(here, node)
            if node.tag == _TAG + "int":
                digits = sum(ch.isdigit() for ch in node.value)
                if digits > MAX_INT_DIGITS:
                    raise _Refused(
                        f"{here} = {shown_text(node.value)}: integer of {digits} digits "
                        f"(allowed: at most {MAX_INT_DIGITS} digits)",
                        node.start_mark,
                    )
        elif isinstance(node, SequenceNode):
            stack.extend((child, _join(path, i)) for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _TAG + "merge":
                    stack.append((value_node, path))
                    continue
                name = key_node.value if isinstance(key_node, ScalarNode) else "(complex key)"
                if isinstance(key_node, ScalarNode):
                    ident = (key_node.tag, key_node.value)
                    if ident in first:
                        raise _Refused(
                            f"{_join(path, name)}: key given twice (at {_line(first[ident])} and "
                            f"{_line(key_node.start_mark)}); each key may appear once"
                        )
                    first[ident] = key_node.start_mark
                stack.append((key_node, _join(path, name)))
                stack.append((value_node, _join(path, name)))


_OCTAL_11 = re.compile(r"[-+]?0[0-7_]+")  # YAML 1.1 octal: `010` is 8


def _refuse_yaml11_number(here: str, node: ScalarNode) -> None:
    """Refuse the YAML 1.1 number forms that silently read as another value: `010` is octal 8 and `1:00`
    base 60 (60); YAML 1.2 and every user read them otherwise. Hex (`0x1F`) and binary (`0b101`) say
    what they are and are kept."""
    text = node.value
    if ":" in text:
        value = yaml.load(text, Loader=_BoundedLoader)
        raise _Refused(
            f"{here} = {shown_text(text)}: YAML 1.1 reads this as base 60 (= {value}); write the number "
            "in decimal, or quote it for text",
            node.start_mark,
        )
    if node.tag == _TAG + "int" and _OCTAL_11.fullmatch(text) and text.strip("+-_0"):
        value = yaml.load(text, Loader=_BoundedLoader)
        raise _Refused(
            f"{here} = {shown_text(text)}: YAML 1.1 reads a leading zero as octal (= {value}); write the "
            "number without the leading zero",
            node.start_mark,
        )


def _refuse_underflow(here: str, node: ScalarNode) -> None:
    """Refuse a nonzero number below the smallest a double holds: `1e-400` would read as 0 without a word
    (an overflow, `1e400`, reads as inf and is refused by every number field)."""
    mantissa = re.split(r"[eE]", node.value, maxsplit=1)[0]
    try:
        value = float(node.value.replace("_", ""))
    except ValueError:
        return
    if value == 0.0 and any(ch in "123456789" for ch in mantissa):
        raise _Refused(
            f"{here} = {shown_text(node.value)}: too small for a double (it would read as 0); write 0 if "
            "zero is meant",
            node.start_mark,
        )


def _scalar_literals(root: Node, data: Any) -> Literals:
    """Walk the composed nodes beside the constructed data. Constructing a mapping with a merge key
    (``<<``) puts the merged pairs before its own in ``node.value``; the last pair of a key is the one
    the data holds, as for PyYAML. An empty value (``key:``) has no text and is left out."""
    out: Literals = {}
    stack: list[tuple[Node, Any, tuple[str | int, ...]]] = [(root, data, ())]
    while stack:
        node, value, path = stack.pop()
        if isinstance(node, ScalarNode):
            if node.style is None and node.tag in _LITERAL_TAGS and node.value:
                out[path] = (node.value, value)
        elif isinstance(node, MappingNode) and isinstance(value, dict):
            last = {k.value: v for k, v in node.value if isinstance(k, ScalarNode) and k.tag == _TAG + "str"}
            stack.extend((v, value[k], (*path, k)) for k, v in last.items() if k in value)
        elif isinstance(node, SequenceNode) and isinstance(value, list):
            stack.extend((n, v, (*path, i)) for i, (n, v) in enumerate(zip(node.value, value, strict=False)))
    return out


def literal_text(literals: Literals | None, path: tuple[Any, ...], value: Any) -> str | None:
    """The text the user wrote at ``path`` if ``value`` is the object read there (None otherwise: a value
    that came from elsewhere, such as a sweep's override of a base file's key, is not shown as the
    file's text; pydantic's errors carry the input object itself). Python shares ``True``, ``False``,
    ``None`` and small integers, so for those identity shows the value, not where it came from: an
    equal value put at the same path would print as the file's text (the same value)."""
    if not literals or path not in literals:
        return None
    text, read = literals[path]
    return text if read is value else None


def load_yaml_text(text: str, source: str, literals: Literals | None = None) -> Any:
    """Parse YAML text with the bounds of this module; ConfigError (one line) on any problem.

    ``literals``, when given, receives the text as written of the plain scalars (:data:`Literals`)."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here already
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_size(root) > MAX_NODES:
            raise _Refused(
                f"expands to more than {MAX_NODES:,} values through aliases (&anchor / *alias); "
                "write the values out"
            )
        _check_nodes(root)
        data = loader.construct_document(root)
        if literals is not None:
            literals.update(_scalar_literals(root, data))
        return data
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}{_where(exc.mark)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at {_line(mark)}" if mark is not None else ""
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    except (ValueError, RecursionError, OverflowError) as exc:
        raise ConfigError(f"{source}: cannot read the YAML: {type(exc).__name__}: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _os_reason(exc: OSError) -> str:
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "file name too long",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.ENOENT: "not found",
        errno.EISDIR: "is a directory, expected a YAML file",
    }
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def read_text_file(path: str | Path, what: str = "config file", limit: int = MAX_FILE_BYTES) -> str:
    """Text of a regular UTF-8 file of at most ``limit`` bytes; ConfigError (one line) otherwise.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a named
    pipe or device never blocks and cannot be swapped in between the check and the read.
    """
    p = Path(path)
    label = path_label(p)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(f"{label}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {what}: {_os_reason(exc)}") from None
    except ValueError as exc:  # e.g. an embedded NUL character
        raise ConfigError(f"{str(p)!r}: cannot read {what}: {exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{label}: is a directory, expected a YAML file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{label}: not a regular file (a pipe, socket or device); expected a YAML file")
        if st.st_size > limit:
            raise ConfigError(f"{label}: {what} of {st.st_size:,} bytes (allowed: at most {limit:,} bytes)")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ConfigError(f"{label}: {what} larger than {limit:,} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {what}: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        raise ConfigError(f"{label}: not UTF-8 text (byte {exc.start}: {bad!r})") from None


def read_yaml_file(path: str | Path, what: str = "config file", literals: Literals | None = None) -> Any:
    """Read and parse a user YAML file with every bound of this module (``literals``: as in
    :func:`load_yaml_text`)."""
    return load_yaml_text(read_text_file(path, what), str(path), literals)
