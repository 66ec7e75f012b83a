"""YAML loading that remembers where every value came from, for error messages.

``load`` returns plain Python data plus a map from document paths (``jobs[2].params.width``)
to ``(line, column)``, so a schema error found later can point at the line a user must edit.
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


def load(text: str, file: str) -> tuple[Any, Marks]:
    """Parse one YAML document; syntax errors become ManifestErrors with line and column."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks: Marks = {}
        data = None if node is None else _build(loader, node, "", marks, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(filter(None, [exc.context, exc.problem]))
        raise ManifestError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {exc}", file=file) from exc
    finally:
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


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: str, marks: Marks, file: str) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise _error(
                    f"a mapping key must be a plain value, not {key!r}", key_node, file, path
                )
            if key in result:
                raise _error(f"duplicate key {key!r}", key_node, file, join(path, str(key)))
            result[key] = _build(loader, value_node, join(path, str(key)), marks, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, join(path, i), marks, file) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def _error(message: str, node: yaml.Node, file: str, path: str) -> ManifestError:
    mark = node.start_mark
    return ManifestError(message, file=file, path=path, line=mark.line + 1, column=mark.column + 1)
