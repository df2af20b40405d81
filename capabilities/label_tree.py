"""Hierarchical label sets: a tree whose leaves are the labels a strategy scores.

A tree file is YAML in one of two forms. Nested: a mapping of node name to its node, where a
node is null (a leaf), a string (a described leaf), a list of children (each a name or a
one-key mapping of name to node) or a mapping with `description` and `children`. Paths: a list
of `a/b/c` strings, or of `{path: a/b/c, description: ...}` mappings (a path ending at a parent
describes that parent). Node names are unique across the tree, so any level can be named alone
(in an alert rule or a catalog entry).

A parent's probability is the sum of its leaves'; a text's path is chosen from the top: the most
probable node of the first level, then its most probable child, down to a leaf or a stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from capabilities.errors import CapabilityError

NODE_KEYS = frozenset({"description", "children"})


class LabelTreeError(CapabilityError):
    """A label tree file is missing, unreadable or not a tree; the message says where."""


class _Problem(Exception):
    """What is wrong at one place of a tree file; `load_label_tree` adds the file."""


@dataclass
class _Node:
    name: str
    description: str | None = None
    parent: str | None = None
    children: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PathStep:
    """One level of a text's path: a node and its probability (the sum of its leaves')."""

    name: str
    probability: float


class LabelTree:
    """Nodes by name, each knowing its parent and children; the leaves are the labels."""

    def __init__(self, nodes: dict[str, _Node]) -> None:
        self._nodes = nodes
        self.roots = [name for name, node in nodes.items() if node.parent is None]
        self.leaves = [name for name, node in nodes.items() if not node.children]
        self.depth = max(len(self.path(leaf)) for leaf in self.leaves)
        column = {leaf: i for i, leaf in enumerate(self.leaves)}
        self._names = list(nodes)
        # Which leaves each node sums: node probabilities are one matrix product away.
        self._membership = np.zeros((len(self.leaves), len(self._names)), dtype=np.float64)
        for j, name in enumerate(self._names):
            for leaf in self.leaves_under(name):
                self._membership[column[leaf], j] = 1.0

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def description(self, name: str) -> str | None:
        return self._nodes[name].description

    def path(self, name: str) -> list[str]:
        """The names from a first-level node down to `name`."""
        names = []
        current: str | None = name
        while current is not None:
            names.append(current)
            current = self._nodes[current].parent
        return names[::-1]

    def leaves_under(self, name: str) -> list[str]:
        node = self._nodes[name]
        if not node.children:
            return [name]
        return [leaf for child in node.children for leaf in self.leaves_under(child)]

    def node_probabilities(self, leaf_names: list[str], probabilities: np.ndarray) -> np.ndarray:
        """Each text's probability of every node of `names`, from its leaves' probabilities
        (columns in `leaf_names` order)."""
        column = {name: i for i, name in enumerate(leaf_names)}
        order = [column[leaf] for leaf in self.leaves]
        return probabilities[:, order] @ self._membership

    def decode(
        self,
        leaf_names: list[str],
        probabilities: np.ndarray,
        depth: int | None = None,
        min_probability: float | None = None,
    ) -> list[list[PathStep]]:
        """Each text's path from the top: the most probable node at each level under the one
        above, stopping at a leaf, at `depth` levels, or before the first node whose probability
        is under `min_probability` (the first level always answers)."""
        position = {name: j for j, name in enumerate(self._names)}
        paths = []
        for row in self.node_probabilities(leaf_names, probabilities):
            steps: list[PathStep] = []
            candidates = self.roots
            while candidates and (depth is None or len(steps) < depth):
                best = max(candidates, key=lambda name: row[position[name]])
                probability = float(min(1.0, max(0.0, row[position[best]])))
                if steps and min_probability is not None and probability < min_probability:
                    break
                steps.append(PathStep(best, probability))
                candidates = self._nodes[best].children
            paths.append(steps)
        return paths

    def check_leaves(self, labels: list[str], source: str) -> None:
        """Raises unless the leaves are exactly `labels` (what `source` scores)."""
        missing = sorted(set(labels) - set(self.leaves))
        extra = sorted(set(self.leaves) - set(labels))
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"labels of {source} that are no leaf of the tree: {missing}")
            if extra:
                problems.append(f"leaves that {source} never answers: {extra}")
            raise LabelTreeError(
                "label tree: its leaves must be exactly the labels; " + "; ".join(problems)
            )


def load_label_tree(path: Path) -> tuple[LabelTree, bytes]:
    """Reads and checks a tree file; returns it with the file's bytes, for `track_file`."""
    if not path.is_file():
        raise LabelTreeError(f"label tree file {path} does not exist")
    content = path.read_bytes()
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as error:
        raise LabelTreeError(f"label tree file {path} is not valid YAML: {error}") from None
    nodes: dict[str, _Node] = {}
    try:
        if isinstance(document, dict):
            _add_children(nodes, None, document, "")
        elif isinstance(document, list):
            _add_paths(nodes, document)
        else:
            raise _Problem(
                "give a mapping of parent to children, or a list of `a/b/c` paths, at the top"
            )
    except _Problem as error:
        raise LabelTreeError(f"label tree file {path}: {error}") from None
    if len(nodes) < 2 or len([n for n in nodes.values() if not n.children]) < 2:
        raise LabelTreeError(f"label tree file {path}: give at least 2 leaves")
    return LabelTree(nodes), content


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem(f"{where}: a node name must be a non-empty string, not {value!r}")
    if "/" in value:
        raise _Problem(f"{where}: node name {value!r} may not contain '/'")
    return value


def _add(nodes: dict[str, _Node], name: str, parent: str | None, where: str) -> _Node:
    if name in nodes:
        first = "/".join(_ancestry(nodes, name))
        raise _Problem(
            f"{where}: node {name!r} appears twice (also at {first}); node names must be unique "
            "across the tree so that any level can be named alone"
        )
    nodes[name] = _Node(name=name, parent=parent)
    if parent is not None:
        nodes[parent].children.append(name)
    return nodes[name]


def _ancestry(nodes: dict[str, _Node], name: str) -> list[str]:
    names = [name]
    while (parent := nodes[names[-1]].parent) is not None:
        names.append(parent)
    return names[::-1]


def _children_entries(value: object, where: str) -> Iterator[tuple[str, object]]:
    """(name, node) pairs of a children mapping, or of a list of names / one-key mappings."""
    if isinstance(value, dict):
        yield from value.items()
        return
    if not isinstance(value, list):
        raise _Problem(f"{where}: children must be a list or a mapping, not {value!r}")
    for index, entry in enumerate(value):
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise _Problem(
                    f"{where}[{index}]: a child in a list is a name or a one-key mapping "
                    f"of name to node, not {entry!r}"
                )
            yield next(iter(entry.items()))
        else:
            yield entry, None


def _add_children(nodes: dict[str, _Node], parent: str | None, value: object, where: str) -> None:
    entries = list(_children_entries(value, where or "top"))
    if not entries:
        raise _Problem(f"{where or 'top'}: a parent needs at least one child")
    for raw_name, node_value in entries:
        name = _name(raw_name, where or "top")
        here = f"{where}/{name}" if where else name
        node = _add(nodes, name, parent, here)
        if node_value is None:
            continue
        if isinstance(node_value, str):
            node.description = node_value
        elif isinstance(node_value, list):
            _add_children(nodes, name, node_value, here)
        elif isinstance(node_value, dict) and set(node_value) <= NODE_KEYS:
            description = node_value.get("description")
            if description is not None and not isinstance(description, str):
                raise _Problem(f"{here}: description must be a string")
            node.description = description
            if node_value.get("children") is not None:
                _add_children(nodes, name, node_value["children"], here)
        elif isinstance(node_value, dict):
            unknown = sorted(map(str, set(node_value) - NODE_KEYS))
            raise _Problem(
                f"{here}: unknown keys {unknown}; a node mapping has only 'description' and "
                "'children' (list children under 'children')"
            )
        else:
            raise _Problem(
                f"{here}: a node is null, a description, a list of children or a mapping with "
                f"description and children, not {node_value!r}"
            )


def _add_paths(nodes: dict[str, _Node], entries: list[object]) -> None:
    descriptions: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"entry {index + 1}"
        description = None
        if isinstance(entry, dict):
            if set(entry) - {"path", "description"} or "path" not in entry:
                raise _Problem(f"{where}: a path entry has 'path' and optional 'description'")
            entry, description = entry["path"], entry.get("description")
        if not isinstance(entry, str) or not entry.strip("/"):
            raise _Problem(f"{where}: a path is a string such as 'cards/card_arrival'")
        parent = None
        for raw in entry.strip("/").split("/"):
            name = _name(raw, where)
            if name in nodes:
                if nodes[name].parent != parent:
                    previous = "/".join(_ancestry(nodes, name))
                    raise _Problem(
                        f"{where}: {entry!r} puts {name!r} under {parent!r}, but it is already "
                        f"at {previous}; node names must be unique across the tree"
                    )
            else:
                _add(nodes, name, parent, where)
            parent = name
        if description is not None:
            if not isinstance(description, str):
                raise _Problem(f"{where}: description must be a string")
            assert parent is not None  # the path named one node at least
            descriptions[parent] = description
    for name, description in descriptions.items():
        nodes[name].description = description
