"""Safe YAML as a node tree with positions: shared by the config and the playbooks.

Files are only *composed* into nodes, never constructed: every value keeps its
line and column for error messages, and no tag can ever instantiate a Python
object.  Aliases are refused while composing (an alias bomb never expands), and
`Nodes` gives typed accessors whose failures name the node; what a failure does
(stop at once, or note it and carry on) is up to the subclass.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from typing import Callable, Iterator, NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.addresses import MAC_RE, normalise_mac  # noqa: F401 - re-exported for config and playbooks

__all__ = ["MAX_FILE_BYTES", "YamlProblem", "Nodes", "compose", "read_text", "normalise_mac",
           "NAME_RE", "TAG_RE", "short", "join", "position"]

MAX_FILE_BYTES = 1024 * 1024
"""A config or playbook file is a few KiB; anything bigger is a mistake or an attack on the parser."""

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TAG_RE = re.compile(r"[a-z0-9_-]{1,32}")

YAML = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (YAML + t for t in ("str", "int", "float", "bool", "null"))
TIMESTAMP, MAP, SEQ, MERGE = (YAML + t for t in ("timestamp", "map", "seq", "merge"))
KIND = {
    STR: "a string", INT: "an integer", FLOAT: "a float", BOOL: "a boolean",
    NULL: "null", TIMESTAMP: "a date", MAP: "a mapping", SEQ: "a list",
}
# Everything else (!!python/..., !!binary, !!set, local !tags, the << merge key) is refused.
ALLOWED_TAGS = frozenset(KIND)
TEXT_TAGS = frozenset({STR, INT, FLOAT, TIMESTAMP})


class YamlProblem(Exception):
    """A problem found before any field is known: reading, decoding or composing the file.

    line and column are 1-based, or None when the problem is the whole file.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column


def short(text: str, limit: int = 40) -> str:
    """Quote user text in messages without letting a huge value flood the terminal."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def tag_name(tag: str) -> str:
    return "!!" + tag[len(YAML):] if tag.startswith(YAML) else tag


def position(node: Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Refused(Exception):
    """Raised from inside the composer, before the source name is known."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses aliases (billion-laughs, and they hide where a value came from)."""

    def compose_node(self, parent: Node | None, index: object) -> Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(mark.line + 1, mark.column + 1, "aliases are not allowed")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def compose(text: str) -> Node | None:
    """The single document in ``text`` as nodes (None if empty); YAML errors become YamlProblem."""
    try:
        return yaml.compose(text, Loader=_Loader)
    except _Refused as e:
        raise YamlProblem(e.message, e.line, e.column) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = f"YAML syntax error: {e.problem or e.context}"
        if e.context == "expected a single document in the stream":
            msg = "only one YAML document is allowed (found a second '---')"
        elif e.problem and e.context:
            ctx_line = f" on line {e.context_mark.line + 1}" if e.context_mark else ""
            msg += f" ({e.context}{ctx_line})"
        raise YamlProblem(msg, mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise YamlProblem(f"invalid character {chr(e.character)!r}: {e.reason}", line, column) from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"YAML error: {e}") from None
    except RecursionError:
        raise YamlProblem("YAML is nested too deeply") from None


def read_text(source: str, opener: Callable[..., object] = open) -> str:
    """Read, size-check and decode one file; every failure is a YamlProblem.

    ``opener`` is the caller's ``open``, so its tests can simulate an unreadable file.
    """
    try:
        st = os.stat(source)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise YamlProblem("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise YamlProblem(f"file is larger than 1 MiB ({st.st_size} bytes)")
        with opener(source, "rb") as fh:  # type: ignore[attr-defined]
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlProblem("file not found") from None
    except PermissionError:
        raise YamlProblem("cannot read file: permission denied") from None
    except OSError as e:
        raise YamlProblem(f"cannot read file: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:  # grew between stat and read
        raise YamlProblem("file is larger than 1 MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise YamlProblem(f"not valid UTF-8 (byte {e.start})", data.count(b"\n", 0, e.start) + 1,
                          e.start - line_start + 1) from None


class Nodes:
    """Typed accessors over a node tree; every failure names the node and the field path.

    Subclasses define `fail` (must not return).  `soft` is for problems after which
    parsing can sensibly go on (an unknown or duplicate key); by default it fails too.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._ctor = SafeConstructor()  # only ever fed int/float scalars

    def fail(self, node: Node | None, field: str, message: str) -> NoReturn:
        raise NotImplementedError

    def soft(self, node: Node, field: str, message: str) -> None:
        self.fail(node, field, message)

    @staticmethod
    def got(node: Node, secret: bool = False) -> str:
        kind = KIND.get(node.tag, tag_name(node.tag))
        if isinstance(node, ScalarNode) and not secret and node.tag != NULL:
            return f"{kind} ({short(node.value)})"
        return kind

    @staticmethod
    def bad_tags(root: Node) -> Iterator[tuple[Node, str, str]]:
        """(node, path, message) for every non-core tag, in document order, even under unknown keys."""
        stack: list[tuple[Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if node.tag == MERGE:
                yield node, path, "merge keys ('<<') are not allowed"
            elif node.tag not in ALLOWED_TAGS:
                yield node, path, f"tag {short(tag_name(node.tag))} is not allowed"
            if isinstance(node, SequenceNode):
                stack.extend((n, f"{path}[{i}]") for i, n in reversed(list(enumerate(node.value))))
            elif isinstance(node, MappingNode):
                for k, v in reversed(node.value):
                    sub = join(path, str(k.value)) if isinstance(k, ScalarNode) else path
                    stack += [(v, sub), (k, sub)]

    def check_tags(self, root: Node) -> None:
        for node, path, message in self.bad_tags(root):
            self.fail(node, path, message)

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...],
                null_ok: bool = True) -> dict[str, Node]:
        """Key -> value node; rejects duplicate and unknown keys (typos must not be silently ignored)."""
        if null_ok and node.tag == NULL:
            return {}
        if not isinstance(node, MappingNode):
            what = "expected a mapping" if path else "the top level must be a mapping"
            self.fail(node, path, f"{what}, got {self.got(node)}")
        out: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.fail(key, path, f"keys must be plain strings, got {self.got(key)}")
            name = key.value
            sub = join(path, name)
            if name in out:
                self.soft(key, sub, f"duplicate key {short(name)} (first on line {lines[name]})")
                continue
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.soft(key, sub, f"unknown key {short(name)}{hint}; allowed keys: {', '.join(allowed)}")
                continue
            out[name] = value
            lines[name] = key.start_mark.line + 1
        return out

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, path, f"expected a list, got {self.got(node)}")
        return list(node.value)

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int:
        """Only YAML ints: a bool (true, yes, on) or a float is a type error, not 1 or 0."""
        if node.tag != INT:
            self.fail(node, path, f"expected an integer, got {self.got(node)}")
        try:
            value = int(self._ctor.construct_yaml_int(node))
        except ValueError:
            self.fail(node, path, f"not a valid integer: {short(node.value)}")
        if not lo <= value <= hi:
            self.fail(node, path, f"must be between {lo} and {hi}, got {value}")
        return value

    def number(self, node: Node, path: str, lo: float, hi: float) -> float:
        if node.tag not in (INT, FLOAT):
            self.fail(node, path, f"expected a number, got {self.got(node)}")
        make = self._ctor.construct_yaml_int if node.tag == INT else self._ctor.construct_yaml_float
        try:
            value = float(make(node))
        except (ValueError, OverflowError):
            self.fail(node, path, f"not a valid number: {short(node.value)}")
        if not lo <= value <= hi:  # also catches .nan
            self.fail(node, path, f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        if node.tag != BOOL:
            self.fail(node, path, f"expected true or false, got {self.got(node)}")
        return bool(self._ctor.construct_yaml_bool(node))

    def text(self, node: Node, path: str, secret: bool = False) -> str:
        """The scalar exactly as written.

        YAML 1.1 turns some addresses and names into numbers (52:54:00:12:34:56 is
        a base-60 int); the literal text is what the user meant, and each field's own
        syntax check is the real validation.  Booleans and null are refused because
        yes/no/on/off/~ are almost always a mistake for a name or path.
        """
        if not isinstance(node, ScalarNode) or node.tag not in TEXT_TAGS:
            hint = "; quote it if you meant text" if node.tag in (BOOL, NULL) else ""
            self.fail(node, path, f"expected a string, got {self.got(node, secret)}{hint}")
        return str(node.value)

    def host(self, node: Node, path: str) -> str:
        raw = self.text(node, path)
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            self.fail(node, path, f"not an IPv4/IPv6 address: {short(raw)}")

    def cidr(self, node: Node, path: str) -> str:
        raw = self.text(node, path)
        try:
            if "/" not in raw:
                raise ValueError
            return str(ipaddress.ip_network(raw, strict=True))
        except ValueError:
            pass
        try:
            fixed = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            self.fail(node, path, f"not a CIDR network (like 10.0.0.0/8): {short(raw)}")
        if "/" not in raw:
            self.fail(node, path, f"missing prefix length: {short(raw)} (did you mean {str(fixed)!r}?)")
        self.fail(node, path, f"host bits set in {short(raw)} (did you mean {str(fixed)!r}?)")

    def optional(self, section: dict[str, Node], key: str, path: str,
                 convert: Callable[[Node, str], object], out: dict[str, object], attr: str) -> None:
        """Set out[attr] only when the key is present, so the dataclass's own defaults apply otherwise."""
        if key in section:
            out[attr] = convert(section[key], join(path, key))
