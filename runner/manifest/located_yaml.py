"""YAML loading that remembers where every value came from, for error messages.

``load`` returns plain Python data plus a map from document paths (``jobs[2].params.width``)
to ``(line, column)``, so a schema error found later can point at the line a user must edit.

What a hostile file could make of it is bounded: aliases may repeat at most
``MAX_REPEATED_NODES`` nodes in all ("billion laughs" stops there, at once), an alias inside
itself and nesting deeper than ``MAX_DEPTH`` are refused with their line, and so is text
that cannot be written as UTF-8 (a lone surrogate such as "\\ud800"). Merge keys follow
YAML: a key written in the mapping beats the same key merged from ``<<: *anchor``.
"""

from __future__ import annotations

from typing import Any

import yaml

from runner.errors import ManifestError

Marks = dict[str, tuple[int, int]]


def join(path: str, key: str | int) -> str:
    """The document path of ``key`` below ``path``: ``jobs`` + 2 → ``jobs[2]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


MAX_DEPTH = 64  # mappings and lists inside each other; a manifest needs five or six
MAX_REPEATED_NODES = 100_000  # nodes aliases may repeat in all; a manifest needs a few hundred


def load(text: str, file: str) -> tuple[Any, Marks]:
    """Parse one YAML document; syntax errors become ManifestErrors with line and column."""
    loader: _DepthBoundLoader | None = None
    try:
        loader = _DepthBoundLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        marks: Marks = {}
        data = None if node is None else _Builder(loader, marks, file).build(node, "", 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(filter(None, [exc.context, exc.problem]))
        raise ManifestError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ManifestError(
            f"invalid YAML: character {exc.character:#06x} is not allowed in YAML text",
            file=file,
            line=line,
        ) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {exc}", file=file) from exc
    except RecursionError:  # the parser itself, before our own depth check could see it
        raise ManifestError(
            f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)", file=file
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, marks


def locate(marks: Marks, path: str) -> tuple[int, int] | None:
    """The mark of ``path``, or of its closest ancestor that has one."""
    while path:
        if path in marks:
            return marks[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return marks.get("")


class _DepthBoundLoader(yaml.SafeLoader):
    """Refuses nesting past ``MAX_DEPTH`` as it composes, before the scanner reads further
    (whose cost grows with the square of the depth: 50,000 ``[`` took 20 s)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Plain data from composed nodes, within the bounds of the module docstring."""

    def __init__(self, loader: yaml.SafeLoader, marks: Marks, file: str) -> None:
        self.loader, self.marks, self.file = loader, marks, file
        self.built: set[int] = set()  # nodes built once: building one again is an alias
        self.repeated = 0
        self.open: set[int] = set()  # the nodes being built, outermost first

    def build(self, node: yaml.Node, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _error(f"nested more than {MAX_DEPTH} levels deep", node, self.file, path)
        if id(node) in self.open:
            raise _error("an alias inside the node it names (it never ends)", node, self.file, path)
        if id(node) in self.built:
            self.repeated += 1
            if self.repeated > MAX_REPEATED_NODES:
                raise _error(
                    f"aliases repeat more than {MAX_REPEATED_NODES:,} values (a YAML bomb?)",
                    node,
                    self.file,
                    path,
                )
        self.built.add(id(node))
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path, depth)
                return [
                    self.build(item, join(path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            finally:
                self.open.discard(id(node))
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str):
            _check_text(value, node, self.file, path)
        return value

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[Any, Any]:
        written = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
        self.loader.flatten_mapping(node)  # puts `<<: *anchor` keys first, in YAML's order
        merged = len(node.value) - written
        result: dict[Any, Any] = {}
        from_merge: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            if id(key_node) in self.open:
                raise _error("an alias inside the node it names", key_node, self.file, path)
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise _error(
                    f"a mapping key must be a plain value, not {key!r}", key_node, self.file, path
                )
            if isinstance(key, str):
                _check_text(key, key_node, self.file, path)
            if key in result and key not in from_merge:
                raise _error(f"duplicate key {key!r}", key_node, self.file, join(path, str(key)))
            from_merge.discard(key)  # a written key beats a merged one
            if index < merged:
                from_merge.add(key)
            result[key] = self.build(value_node, join(path, str(key)), depth + 1)
        return result


def _check_text(text: str, node: yaml.Node, file: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise _error(
            f"text that cannot be written as UTF-8 ({bad}: a lone surrogate)", node, file, path
        ) from None


def _error(message: str, node: yaml.Node, file: str, path: str) -> ManifestError:
    mark = node.start_mark
    return ManifestError(message, file=file, path=path, line=mark.line + 1, column=mark.column + 1)
