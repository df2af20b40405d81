"""Execution plan of one request: which capabilities each text needs, run in dependency order.

Each item names the capabilities it wants; the plan closes that set under dependencies, runs every
capability once over the (de-duplicated) texts that need it, hands dependents their parents'
outputs, and returns to each item exactly what it asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from capabilities.registry import Registry

RunCapability = Callable[
    [str, list[str], dict[str, list[BaseModel]], list[list[int]]], Awaitable[list[BaseModel]]
]
"""(capability name, texts, parents' outputs aligned with texts, the indexes of the items each
text is for) -> one output per text."""


@dataclass(frozen=True)
class Plan:
    requested: list[frozenset[str]]
    """What each item asked for: what it gets back."""
    needed: list[frozenset[str]]
    """What each item needs computed: `requested` closed under dependencies."""
    order: list[str]
    """Every needed capability once, parents before children."""
    depends_on: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, registry: Registry, requested: Sequence[Sequence[str]]) -> Plan:
        wanted = [frozenset(names) for names in requested]
        needed = [registry.closure(names) for names in wanted]
        union = frozenset().union(*needed)
        order = [name for level in registry.levels for name in level if name in union]
        return cls(wanted, needed, order, {name: registry.depends_on[name] for name in order})

    def items_needing(self, name: str) -> list[int]:
        return [index for index, needed in enumerate(self.needed) if name in needed]


async def execute(
    plan: Plan, texts: Sequence[str], run: RunCapability
) -> list[dict[str, BaseModel]]:
    """Runs the plan; a capability starts as soon as its parents are done, not a whole level."""
    outputs: list[dict[str, BaseModel]] = [{} for _ in texts]

    async def run_one(name: str, parents_done: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*parents_done)
        indexes = plan.items_needing(name)
        # Within one request identical texts share their parents' outputs, so one copy suffices.
        items: dict[str, list[int]] = {}
        for index in indexes:
            items.setdefault(texts[index], []).append(index)
        unique = list(items)
        parents = {
            parent: [outputs[items[text][0]][parent] for text in unique]
            for parent in plan.depends_on[name]
        }
        results = await run(name, unique, parents, list(items.values()))
        by_text = dict(zip(unique, results, strict=True))
        for index in indexes:
            outputs[index][name] = by_text[texts[index]]

    try:
        async with asyncio.TaskGroup() as group:
            tasks: dict[str, asyncio.Task[None]] = {}
            for name in plan.order:
                parents_done = [tasks[parent] for parent in plan.depends_on[name]]
                tasks[name] = group.create_task(run_one(name, parents_done))
    except ExceptionGroup as failures:
        # The group cancelled the siblings; callers map one typed error, not a group.
        raise failures.exceptions[0] from None
    return [
        {name: output[name] for name in sorted(requested)}
        for output, requested in zip(outputs, plan.requested, strict=True)
    ]
