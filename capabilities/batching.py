"""Capability-aware batching: many callers' texts for one capability, run once.

A runner's `@serve.batch` entry hands this module the calls of several concurrent requests. Calls
with the same options share one `Capability.run` over their texts; identical inputs (the same text
with the same parents' outputs) are computed once, and inputs the result cache already holds not
at all; each caller gets back its own slice, or its own error, so one caller's bad options never
fail the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from capabilities.base import Capability, RunContext, TextSource
from capabilities.cache import ResultCache, cache_key
from capabilities.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    validation_problems,
)

logger = logging.getLogger("capserve.batching")


class RunCall(BaseModel):
    """One caller's share of a batch: texts, their parents' outputs, options, and where each
    text came from (empty when the caller does not say)."""

    texts: list[str]
    parents: dict[str, list[Any]] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    sources: list[list[TextSource]] = Field(default_factory=list)
    trace: str | None = Field(
        default=None, description="The caller's W3C traceparent: a failure is logged with it."
    )


class RunFailure(BaseModel):
    """Why a call failed; the ingress turns it back into a typed error."""

    kind: Literal["invalid_request", "unavailable", "internal"]
    message: str
    param: str | None = None
    retry_after_s: float | None = Field(
        default=None, description="When an `unavailable` call is worth trying again."
    )


class RunReply(BaseModel):
    outputs: list[Any] | None = None
    failure: RunFailure | None = None
    version: str


@dataclass(frozen=True)
class BatchReport:
    """What one batch did, for /v1/stats."""

    calls: int
    texts: int
    unique_texts: int
    runs: int
    cache_hits: int = 0


def _options_key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def _input_key(text: str, parents: dict[str, list[Any]], position: int) -> str:
    # Parents are part of the input: the same text under two predicted labels is two inputs.
    parent_outputs = {
        name: outputs[position].model_dump(mode="json")
        if isinstance(outputs[position], BaseModel)
        else outputs[position]
        for name, outputs in parents.items()
    }
    return json.dumps([text, parent_outputs], sort_keys=True, default=str)


@dataclass
class _Group:
    """Calls that share options: one run over their distinct inputs."""

    options: dict[str, Any]
    call_indexes: list[int] = field(default_factory=list)
    inputs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    sources: dict[str, list[TextSource]] = field(default_factory=dict)
    """Of each input, where its copies came from, across the group's calls."""

    def add(self, index: int, call: RunCall, keys: list[str]) -> None:
        self.call_indexes.append(index)
        for position, (text, key) in enumerate(zip(call.texts, keys, strict=True)):
            parents = {name: outputs[position] for name, outputs in call.parents.items()}
            self.inputs.setdefault(key, (text, parents))
            sources = self.sources.setdefault(key, [])
            if call.sources:
                sources += call.sources[position]


async def _run(
    capability: Capability,
    inputs: list[tuple[str, dict[str, Any]]],
    options: BaseModel,
    sources: list[list[TextSource]],
) -> list[BaseModel]:
    parent_names = inputs[0][1].keys()
    context = RunContext(
        parents={name: [parents[name] for _, parents in inputs] for name in parent_names},
        options=options,
        sources=sources,
    )
    return await capability.run([text for text, _ in inputs], context)


def failure_of(error: Exception, traces: Sequence[str] = ()) -> RunFailure:
    """What the callers whose `traces` (traceparents) a run served are told of its error."""
    if isinstance(error, InvalidRequestError):
        return RunFailure(kind="invalid_request", message=str(error), param=error.param)
    if isinstance(error, ValidationError):
        return RunFailure(kind="invalid_request", message=validation_problems(error))
    callers = f" (traceparent {', '.join(traces)})" if traces else ""
    if isinstance(error, EngineUnavailableError):
        # Expected while an engine is down or overloaded: the caller answers 503, no traceback.
        logger.warning("capability run failed%s: %s", callers, error)
        return RunFailure(kind="unavailable", message=str(error), retry_after_s=error.retry_after_s)
    logger.error("capability run failed%s", callers, exc_info=error)
    return RunFailure(kind="internal", message=f"{type(error).__name__}: {error}")


def _alone(options: dict[str, Any], index: int, call: RunCall, keys: list[str]) -> _Group:
    group = _Group(options=options)
    group.add(index, call, keys)
    return group


async def run_batch(
    capability: Capability, calls: Sequence[RunCall], cache: ResultCache | None = None
) -> tuple[list[RunReply], BatchReport]:
    """Runs `capability` once per distinct options over the distinct inputs of all calls that
    `cache` does not already answer (keys carry the settings version, so never a stale one)."""
    groups: dict[str, _Group] = {}
    keys_per_call = [
        [_input_key(text, call.parents, position) for position, text in enumerate(call.texts)]
        for call in calls
    ]
    for index, call in enumerate(calls):
        group = groups.setdefault(_options_key(call.options), _Group(options=call.options))
        group.add(index, call, keys_per_call[index])

    version = capability.version
    use_cache = cache if capability.cacheable else None
    runs = 0
    cache_hits = 0

    async def run_group(options_key: str, group: _Group) -> dict[str, Any] | RunFailure:
        nonlocal runs, cache_hits
        try:
            options = capability.options_model.model_validate(group.options)
            cache_keys = {
                key: cache_key(capability.name, version, options_key, key) for key in group.inputs
            }
            found = await use_cache.get_many(list(cache_keys.values())) if use_cache else {}
            outputs = {
                key: capability.output_model.model_validate_json(found[cache_keys[key]])
                for key in group.inputs
                if cache_keys[key] in found
            }
            cache_hits += len(outputs)
            missing = [key for key in group.inputs if key not in outputs]
            if missing:
                computed = await _run(
                    capability,
                    [group.inputs[key] for key in missing],
                    options,
                    [group.sources[key] for key in missing],
                )
                runs += 1
                outputs.update(zip(missing, computed, strict=True))
                if use_cache:
                    await use_cache.set_many(
                        {
                            cache_keys[key]: outputs[key].model_dump_json().encode()
                            for key in missing
                            if capability.cacheable_output(outputs[key])
                        }
                    )
        except Exception as error:  # noqa: BLE001 - reported to this group's callers only
            traces = [trace for i in group.call_indexes if (trace := calls[i].trace)]
            return failure_of(error, traces)
        return outputs

    replies: list[RunReply] = [RunReply(version=version) for _ in calls]
    results = await asyncio.gather(*(run_group(key, group) for key, group in groups.items()))
    ran = list(zip(groups.values(), results, strict=True))
    # A shared run can fail for one caller's input (a prompt too long for the model, an output
    # the engine could not decode): run such a group's calls alone, so only that caller fails.
    # An unavailable engine would fail each of them the same way, so those are not re-run.
    alone = [
        (options_key, _alone(group.options, index, calls[index], keys_per_call[index]))
        for (options_key, group), result in zip(groups.items(), results, strict=True)
        if isinstance(result, RunFailure)
        and result.kind != "unavailable"
        and len(group.call_indexes) > 1
        for index in group.call_indexes
    ]
    if alone:
        again = await asyncio.gather(*(run_group(key, group) for key, group in alone))
        ran += [(group, result) for (_, group), result in zip(alone, again, strict=True)]
    for group, result in ran:
        for index in group.call_indexes:
            if isinstance(result, RunFailure):
                replies[index] = RunReply(failure=result, version=version)
            else:
                replies[index] = RunReply(
                    outputs=[result[key] for key in keys_per_call[index]], version=version
                )
    report = BatchReport(
        calls=len(calls),
        texts=sum(len(call.texts) for call in calls),
        unique_texts=sum(len(group.inputs) for group in groups.values()),
        runs=runs,
        cache_hits=cache_hits,
    )
    return replies, report
