"""One vLLM `AsyncLLM` behind the engine protocol: embed, choose and generate_json.

No Ray here: the Serve deployment, the offline benchmark and the integration tests all use it.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import numpy as np
from vllm import PoolingParams, SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM

from capabilities.engine import ChoiceResult
from deployments.choice_probabilities import DecodeStep, StepAlternative, choice_distribution
from deployments.config import ModelConfig
from deployments.errors import EngineOutputError


def engine_args_for(config: ModelConfig) -> AsyncEngineArgs:
    """The `AsyncEngineArgs` a model's config stands for."""
    args = config.engine_args
    # Compact JSON: a model that may pad with whitespace can exhaust max_tokens before `}`.
    structured = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
    return AsyncEngineArgs(
        model=config.model,
        runner=config.runner,
        served_model_name=[config.name],
        distributed_executor_backend="ray" if args.world_size > 1 else None,
        disable_log_stats=True,
        structured_outputs_config=structured,
        **args.model_dump(exclude_none=True),
    )


class VLLMEngine:
    """Wraps an `AsyncLLM`; every method takes many inputs and runs them concurrently."""

    def __init__(self, config: ModelConfig) -> None:
        self.name = config.name
        self.config = config
        self._llm = AsyncLLM.from_engine_args(engine_args_for(config))
        self._max_len = self._llm.model_config.max_model_len
        tokenizer = self._llm.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self._stop_token_ids = {eos} if eos is not None else set()

    async def _final(self, outputs: AsyncGenerator[Any, None]) -> Any:
        final = None
        async for output in outputs:
            final = output
        return final

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        truncation = {"truncation": True, "max_length": self._max_len}
        outputs = await asyncio.gather(
            *(
                self._final(
                    self._llm.encode(
                        text,
                        PoolingParams(task="embed"),
                        request_id=f"embed-{uuid.uuid4().hex}",
                        tokenization_kwargs=truncation,
                    )
                )
                for text in texts
            )
        )
        vectors = np.stack([output.outputs.data.float().numpy() for output in outputs])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)

    async def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[ChoiceResult]:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max(len(choice) for choice in choices) + 2,
            logprobs=self.config.engine_args.max_logprobs,
            structured_outputs=StructuredOutputsParams(choice=list(choices)),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        outputs = await asyncio.gather(
            *(
                self._final(self._llm.generate(p, params, f"choose-{uuid.uuid4().hex}"))
                for p in prompts
            )
        )
        return [self._choice_result(output.outputs[0], choices) for output in outputs]

    def _choice_result(self, completion: Any, choices: Sequence[str]) -> ChoiceResult:
        if completion.text not in choices:
            raise EngineOutputError(
                f"structured choice decode returned {completion.text!r}, not one of the choices"
            )
        steps = [
            DecodeStep(
                token_id=token_id,
                text=position[token_id].decoded_token or "",
                alternatives=[
                    StepAlternative(token_id=tid, text=lp.decoded_token or "", logprob=lp.logprob)
                    for tid, lp in position.items()
                    if lp.logprob > -math.inf
                ],
            )
            for token_id, position in zip(
                completion.token_ids, completion.logprobs or [], strict=False
            )
        ]
        probabilities = choice_distribution(choices, steps, self._stop_token_ids)
        return ChoiceResult(choice=completion.text, probabilities=probabilities)

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=self.config.max_tokens,
            structured_outputs=StructuredOutputsParams(json=json_schema),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        outputs = await asyncio.gather(
            *(
                self._final(self._llm.generate(p, params, f"json-{uuid.uuid4().hex}"))
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

    async def check_health(self) -> None:
        """Raises when the engine core process is dead."""
        await self._llm.check_health()

    def shutdown(self) -> None:
        self._llm.shutdown()
