"""The one YAML loader: PyYAML's safe loader, refusing a key repeated in one mapping.

PyYAML keeps the last of two equal keys without a word, so a ``timeout:`` or a
``run:`` written twice would silently lose the first, and a reviewer reading
the first would not see what runs.  Every file flwd reads as YAML (server.yaml,
job files of local, git and add-on sources) is loaded with :func:`load_yaml`.
Merge keys (``<<: *anchor``) may still be overridden by the mapping's own keys,
as YAML intends.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key repeated in one mapping; ``key`` is its path (``limits.max_run_history``, ``steps[0].run``)."""

    def __init__(self, key: str, line: int, first_line: int, mark: Any) -> None:
        super().__init__(None, None, f"duplicate key {key!r} (first on line {first_line})", mark)
        self.key = key
        self.line = line
        self.first_line = first_line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks the whole document for repeated keys before building it."""

    def construct_document(self, node: Node) -> Any:
        refuse_duplicate_keys(node)
        return super().construct_document(node)


def refuse_duplicate_keys(node: Node, path: str = "", seen: set[int] | None = None) -> None:
    """Raise :class:`DuplicateKeyError` for the first key that a mapping under ``node`` repeats."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            refuse_duplicate_keys(item, f"{path}[{index}]", seen)
    elif isinstance(node, MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                refuse_duplicate_keys(value_node, path, seen)
                continue
            name = str(key_node.value) if isinstance(key_node, ScalarNode) else "(complex key)"
            where = f"{path}.{name}" if path else name
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, name)
            if isinstance(key_node, ScalarNode) and identity in first:
                raise DuplicateKeyError(where, line, first[identity], key_node.start_mark)
            first.setdefault(identity, line)
            refuse_duplicate_keys(value_node, where, seen)


def load_yaml(text: str | bytes) -> Any:
    """Parse one YAML document safely; a repeated key raises :class:`DuplicateKeyError` (a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
