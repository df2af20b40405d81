"""Which capabilities exist, what they depend on, and in which order they run.

Built-ins are known by name; a user capability is a `Capability` subclass named by import path
(`package.module:ClassName`). The dependency graph is checked once at start-up: an unknown
dependency or a cycle stops the app with a message that names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence

from capabilities.base import Capability
from capabilities.errors import InvalidRequestError

BUILT_INS: dict[str, str] = {
    "classification": "capabilities.classification:ClassificationCapability",
    "recommendations": "capabilities.recommendations:RecommendationsCapability",
    "alerts": "capabilities.alerts:AlertsCapability",
    "gates": "capabilities.gates:GatesCapability",
}


class RegistryError(ValueError):
    """The configured capabilities do not form a runnable DAG."""


def import_capability(import_path: str) -> type[Capability]:
    """Loads `module:ClassName` and checks it is a Capability subclass."""
    module_name, _, class_name = import_path.partition(":")
    if not module_name or not class_name:
        raise RegistryError(
            f"import_path {import_path!r} must look like 'package.module:ClassName'"
        )
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise RegistryError(f"import_path {import_path!r} cannot be imported: {error}") from None
    if not (isinstance(found, type) and issubclass(found, Capability)):
        raise RegistryError(f"import_path {import_path!r} is not a capabilities.base.Capability")
    return found


def capability_class(name: str, import_path: str | None) -> type[Capability]:
    """The class behind a configured capability: a built-in by name, else its import path."""
    path = import_path or BUILT_INS.get(name)
    if path is None:
        raise RegistryError(
            f"capability {name!r} is not built in ({', '.join(BUILT_INS)}); give its import_path"
        )
    found = import_capability(path)
    if found.name != name:
        raise RegistryError(f"capability {name!r}: {path} declares name {found.name!r}")
    return found


class Registry:
    """The configured capabilities as a DAG: dependency closure and levels that run concurrently."""

    def __init__(self, depends_on: Mapping[str, Sequence[str]]) -> None:
        self.depends_on = {name: tuple(parents) for name, parents in depends_on.items()}
        for name, parents in self.depends_on.items():
            for parent in parents:
                if parent not in self.depends_on:
                    raise RegistryError(
                        f"capability {name!r} depends on {parent!r}, which is not configured; "
                        f"configured: {', '.join(sorted(self.depends_on))}"
                    )
        self.levels = self._levels()

    @classmethod
    def of(cls, classes: Iterable[type[Capability]]) -> Registry:
        return cls({capability.name: capability.depends_on for capability in classes})

    def _levels(self) -> list[list[str]]:
        """Kahn's algorithm by rounds: each round holds what depends only on earlier rounds."""
        remaining = dict(self.depends_on)
        done: set[str] = set()
        levels: list[list[str]] = []
        while remaining:
            ready = sorted(name for name, parents in remaining.items() if set(parents) <= done)
            if not ready:
                raise RegistryError(
                    f"capabilities form a cycle: {' -> '.join(self._cycle(remaining))}"
                )
            levels.append(ready)
            done.update(ready)
            for name in ready:
                del remaining[name]
        return levels

    def _cycle(self, remaining: Mapping[str, Sequence[str]]) -> list[str]:
        # Every node left has a parent left, so walking parents must revisit a node.
        path: list[str] = []
        node = min(remaining)
        while node not in path:
            path.append(node)
            node = next(parent for parent in remaining[node] if parent in remaining)
        return path[path.index(node) :] + [node]

    def closure(self, requested: Iterable[str]) -> frozenset[str]:
        """The requested capabilities plus everything they depend on, transitively."""
        wanted = list(requested)
        unknown = sorted(set(wanted) - set(self.depends_on))
        if unknown:
            raise InvalidRequestError(
                f"unknown capabilities {unknown}; this deployment serves {sorted(self.depends_on)}",
                "capabilities",
            )
        closed: set[str] = set()
        while wanted:
            name = wanted.pop()
            if name not in closed:
                closed.add(name)
                wanted.extend(self.depends_on[name])
        return frozenset(closed)
