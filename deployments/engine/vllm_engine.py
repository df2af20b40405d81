"""One vLLM `AsyncLLM` behind the engine protocol (embed, classify, choose, generate_json) and the
OpenAI endpoints (chat, embeddings).

No Ray here: the Serve deployment, the offline benchmark and the integration tests all use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import json
import os
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, cast

import numpy as np
import vllm
from jinja2 import TemplateError
from vllm import PoolingParams, SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM

from capabilities.engine import ChoiceResult
from capabilities.errors import InvalidRequestError
from capabilities.priority import DEFAULT_PRIORITY, Priority, engine_priority
from deployments.config import ConfigError, ModelConfig
from deployments.engine.calls import ChatCall, ChatMessage, ChatOutput, Embeddings, Rejection
from deployments.engine.choice_decoding import choice_decoder
from deployments.engine.choice_tokens import Tokenizer, choice_keys
from deployments.engine.placement import distributed_executor_backend
from deployments.engine.priority_gate import PriorityGate
from deployments.engine.protocol import TokenCounter
from deployments.http.errors import EngineOutputError

# Label sets (with the cue their prompts end in) whose tokenisation an engine remembers.
CHOICE_SETS_KEPT = 256


def token_counts(output: Any) -> tuple[int, int]:
    """(prompt, generated) tokens of a finished `RequestOutput` or `PoolingRequestOutput`; a
    pooling output generates none."""
    prompt = len(output.prompt_token_ids or ())
    completions = output.outputs if isinstance(output.outputs, list) else []
    return prompt, sum(len(completion.token_ids) for completion in completions)


VLLM_ENGINE_ARGS = frozenset(field.name for field in dataclasses.fields(AsyncEngineArgs))


def check_engine_args(config: ModelConfig, where: str) -> None:
    """Refuses an `engine_args` name that vLLM's `AsyncEngineArgs` does not take, naming the
    close ones; `where` is the config path of the model's `engine_args`."""
    problems = []
    for name in sorted(set(config.engine_kwargs()) - VLLM_ENGINE_ARGS):
        close = difflib.get_close_matches(name, VLLM_ENGINE_ARGS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        problems.append(f"{where}.{name}: not an engine argument of vLLM {vllm.__version__}{hint}")
    if problems:
        raise ConfigError("; ".join(problems))


def capserve_engine_args(config: ModelConfig) -> dict[str, Any]:
    """The engine arguments capserve sets itself (`config.CAPSERVE_ENGINE_ARGS` says why)."""
    return {
        "model": config.model,
        "runner": config.runner,
        "served_model_name": [config.name],
        "distributed_executor_backend": distributed_executor_backend(config),
        "disable_log_stats": True,
        # Compact JSON: a model that may pad with whitespace can exhaust max_tokens before `}`.
        "structured_outputs_config": StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True
        ),
        # Log-probabilities after `allowed_token_ids` masks the logits: one-step `choose` reads
        # the distribution over exactly the allowed tokens from them (choice_decoding.py).
        "logprobs_mode": "processed_logprobs",
    }


def keep_cpu_worker_in_engine_core() -> None:
    """vLLM's CPU platform swaps the `uni` executor for a worker process beside the engine core
    unless VLLM_ENABLE_V1_MULTIPROCESSING is "0" (read in this process when the engine's config
    is made; the engine core stays a process of its own either way). The two processes
    busy-wait on each other over shared memory between steps, which on a few cores takes CPU
    from the model itself: in one measured run the worker inside the engine core served 12% more
    texts per second at 45% less CPU per text. An explicit value in the environment stands."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def engine_args_for(config: ModelConfig) -> AsyncEngineArgs:
    """The `AsyncEngineArgs` a model's config stands for."""
    where = f"model {config.name!r}: engine_args"
    check_engine_args(config, where)
    try:
        return AsyncEngineArgs(**capserve_engine_args(config), **config.engine_kwargs())
    except (TypeError, ValueError) as error:
        # vLLM checks the values, e.g. of a nested config such as compilation_config, here.
        raise ConfigError(f"{where}: {error}") from None


def chat_prompt(
    tokenizer: Any, messages: Sequence[ChatMessage], model: str, template: str | None = None
) -> str | Rejection:
    """The conversation rendered by `template` (the model's `chat_template` setting) or else by
    the tokenizer's own, ready for the reply."""
    if template is None and getattr(tokenizer, "chat_template", None) is None:
        return Rejection(
            message=f"model {model!r} has no chat template in its tokenizer config, so it cannot "
            "serve chat completions; give the model one with its `chat_template` setting "
            "(models[].chat_template in the serve config)"
        )
    try:
        return tokenizer.apply_chat_template(
            [message.model_dump() for message in messages],
            chat_template=template,
            add_generation_prompt=True,
            tokenize=False,
        )
    except TemplateError as error:
        # Templates refuse conversations they do not support, e.g. roles that do not alternate.
        return Rejection(message=f"model {model!r}'s chat template refused the messages: {error}")


def chat_sampling_params(call: ChatCall) -> SamplingParams:
    structured = None
    if call.json_output is not None:
        schema = call.json_output.json_schema
        structured = (
            StructuredOutputsParams(json_object=True)
            if schema is None
            else StructuredOutputsParams(json=schema)
        )
    return SamplingParams(
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        top_p=call.top_p,
        stop=call.stop,
        seed=call.seed,
        structured_outputs=structured,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


class VLLMEngine:
    """Wraps an `AsyncLLM`; every method takes many inputs and runs them concurrently, as
    requests of one `priority` (which vLLM honours under `scheduling_policy: priority`).
    `count_tokens`, when given, is told the tokens of every request that finishes."""

    def __init__(self, config: ModelConfig, count_tokens: TokenCounter | None = None) -> None:
        self.name = config.name
        self.identity = config.identity
        self.config = config
        self._count_tokens = count_tokens
        self._gate = PriorityGate(config.priority)
        args = engine_args_for(config)
        if args.distributed_executor_backend == "uni":
            keep_cpu_worker_in_engine_core()
        self._llm = AsyncLLM.from_engine_args(args)
        self._max_len = self._llm.model_config.max_model_len
        tokenizer = self._llm.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        # None only with engine_args.skip_tokenizer_init: choice calls fail on first use then.
        choice_tokenizer = cast(Tokenizer, tokenizer)
        most = config.engine_args.max_logprobs
        # Every prompt of a classification shares its cue and label set: tokenise them once.
        self._choice_keys = functools.lru_cache(CHOICE_SETS_KEPT)(
            functools.partial(choice_keys, choice_tokenizer, most=most)
        )
        self._choice_decoder = functools.lru_cache(CHOICE_SETS_KEPT)(
            functools.partial(
                choice_decoder,
                choice_tokenizer,
                max_logprobs=most,
                stop_token_ids=frozenset({eos} if eos is not None else ()),
            )
        )

    async def _final(
        self,
        priority: Priority,
        submit: Callable[..., AsyncGenerator[Any, None]],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """The last output of one request to vLLM (`submit`: `generate` or `encode`), sent at
        `priority` once the priority gate admits it."""
        final = None
        try:
            async with self._gate.admitted(priority):
                async for output in submit(*args, priority=engine_priority(priority), **kwargs):
                    final = output
        except VLLMClientError as error:
            # The request's own fault (a prompt longer than the context): its caller's 400.
            raise InvalidRequestError(str(error), "texts") from None
        if final is not None and self._count_tokens is not None:
            self._count_tokens(*token_counts(final))
        return final

    async def embed(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
        return (await self.embeddings(texts, priority)).vectors

    async def _pool(
        self, texts: Sequence[str], params: PoolingParams, priority: Priority
    ) -> list[Any]:
        """One pooling request per text (truncated to the model's length), run concurrently."""
        truncation = {"truncation": True, "max_length": self._max_len}
        return await asyncio.gather(
            *(
                self._final(
                    priority,
                    self._llm.encode,
                    text,
                    params,
                    request_id=f"{params.task}-{uuid.uuid4().hex}",
                    tokenization_kwargs=truncation,
                )
                for text in texts
            )
        )

    async def embeddings(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> Embeddings:
        outputs = await self._pool(texts, PoolingParams(task="embed"), priority)
        vectors = np.stack([output.outputs.data.float().numpy() for output in outputs])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings(
            vectors=(vectors / np.clip(norms, 1e-12, None)).astype(np.float32),
            prompt_tokens=[len(output.prompt_token_ids) for output in outputs],
        )

    async def class_labels(self) -> list[str]:
        """The checkpoint's `id2label` names by id; refused for a model that cannot classify."""
        if "classify" not in await self._llm.get_supported_tasks():
            raise InvalidRequestError(
                f"model {self.name!r} cannot classify: serve a *ForSequenceClassification "
                "checkpoint with runner: pooling (or set engine_args.convert: classify to add a "
                "classification head to a causal LM that was fine-tuned with one)",
                "classifier_model",
            )
        # A checkpoint that classifies names its labels by id.
        id2label = cast(dict[int, str], self._llm.model_config.hf_config.id2label)
        return [str(id2label[i]) for i in sorted(id2label)]

    async def classify(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
        # Logits, not vLLM's activation: the caller's softmax is the same for every checkpoint,
        # whatever its problem_type says (a multi-label sigmoid would not sum to 1).
        params = PoolingParams(task="classify", use_activation=False)
        outputs = await self._pool(texts, params, priority)
        return np.stack([output.outputs.data.float().numpy() for output in outputs])

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None:
        keys = self._choice_keys(cue, tuple(choices))
        return None if keys is None else list(keys)

    async def choose(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        keys: Sequence[str] | None = None,
        priority: Priority = DEFAULT_PRIORITY,
    ) -> list[ChoiceResult]:
        answers = tuple(keys or choices)
        decoders = [self._choice_decoder(prompt.rsplit("\n", 1)[-1], answers) for prompt in prompts]
        outputs = await asyncio.gather(
            *(
                self._final(priority, self._llm.generate, p, d.params, f"choose-{uuid.uuid4().hex}")
                for p, d in zip(prompts, decoders, strict=True)
            )
        )
        return [
            decoder.result(output.outputs[0], choices)
            for output, decoder in zip(outputs, decoders, strict=True)
        ]

    async def generate_json(
        self,
        prompts: Sequence[str],
        json_schema: dict[str, Any],
        priority: Priority = DEFAULT_PRIORITY,
    ) -> list[dict[str, Any]]:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=self.config.max_tokens,
            structured_outputs=StructuredOutputsParams(json=json_schema),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        outputs = await asyncio.gather(
            *(
                self._final(priority, self._llm.generate, p, params, f"json-{uuid.uuid4().hex}")
                for p in prompts
            )
        )
        results = []
        for output in outputs:
            text = output.outputs[0].text
            try:
                results.append(json.loads(text))
            except json.JSONDecodeError:
                raise EngineOutputError(
                    f"generate_json produced no complete JSON within max_tokens="
                    f"{self.config.max_tokens}; raise max_tokens for model {self.name!r}"
                ) from None
        return results

    async def chat(
        self, calls: Sequence[ChatCall], priority: Priority = DEFAULT_PRIORITY
    ) -> list[ChatOutput | Rejection]:
        return list(await asyncio.gather(*(self._chat(call, priority) for call in calls)))

    async def _chat(self, call: ChatCall, priority: Priority) -> ChatOutput | Rejection:
        prompt = chat_prompt(
            self._llm.tokenizer, call.messages, self.name, self.config.chat_template
        )
        if isinstance(prompt, Rejection):
            return prompt
        try:
            output = await self._final(
                priority,
                self._llm.generate,
                prompt,
                chat_sampling_params(call),
                f"chat-{uuid.uuid4().hex}",
                # The template places any BOS itself, as vLLM's own chat server assumes.
                tokenization_kwargs={"add_special_tokens": False},
            )
        except InvalidRequestError as error:
            return Rejection(message=str(error))
        completion = output.outputs[0]
        return ChatOutput(
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=len(output.prompt_token_ids),
            completion_tokens=len(completion.token_ids),
        )

    async def check_health(self) -> None:
        """Raises when the engine core process is dead."""
        await self._llm.check_health()

    async def ready(self) -> None:
        """One real request of the kind the model serves: readiness means answering."""
        await self.check_health()
        tasks = await self._llm.get_supported_tasks()
        if "embed" in tasks:
            await self.embed(["ready"])
        elif "classify" in tasks:
            await self.classify(["ready"])
        else:
            await self.choose(["ready?"], ["yes", "no"])

    def shutdown(self) -> None:
        self._llm.shutdown()
