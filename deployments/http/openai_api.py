"""OpenAI-compatible `/v1/chat/completions` and `/v1/embeddings` over the engine deployments.

`OpenAIEndpoints` is what the ingress answers online and what the batch runner answers for each
such line: it validates a parsed JSON body, picks the configured model, calls that model's engine
and returns the body OpenAI would. A subset of OpenAI's request fields is honoured; unknown ones
are ignored, as OpenAI-compatible servers do, so SDKs that send newer fields keep working. The
app's limits cap what one request may ask for (`max_chat_tokens`, `max_items_per_request`), and
each request's `usage` is what it takes from its key's rate-limit buckets.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.config import LimitsConfig, ModelConfig
from deployments.engine.calls import (
    ChatCall,
    ChatMessage,
    ChatOutput,
    Embeddings,
    JsonOutput,
    Rejection,
)
from deployments.http.errors import (
    BadRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    StreamNotSupportedError,
)
from deployments.http.rate_limit import Usage

CHAT_COMPLETIONS = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
Runner = Literal["generate", "pooling"]
RUNNER_NOUNS: dict[Runner, str] = {
    "generate": "a generative model",
    "pooling": "an embedding model",
}


class OpenAIEngine(Protocol):
    """What the endpoints need of an engine; `EngineClient` is one."""

    async def chat(self, call: ChatCall) -> ChatOutput | Rejection: ...

    async def embeddings(self, texts: Sequence[str]) -> Embeddings: ...


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class Message(OpenAIRequest):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> ChatMessage:
        # Text parts joined by newlines, as vLLM's chat server joins them.
        content = self.content
        text = content if isinstance(content, str) else "\n".join(p.text for p in content)
        return ChatMessage(role=self.role, content=text)


class TextFormat(OpenAIRequest):
    type: Literal["text"]


class JsonObjectFormat(OpenAIRequest):
    type: Literal["json_object"]


class JsonSchemaSpec(OpenAIRequest):
    json_schema: dict[str, Any] = Field(alias="schema")


class JsonSchemaFormat(OpenAIRequest):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class ChatCompletionRequest(OpenAIRequest):
    # Optional fields accept null too: some clients send every field, unset ones as null.
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = None

    def output_tokens(self, cap: int) -> int:
        """The tokens the completion may generate: what it asks for, at most `cap`; `cap`
        when it asks for nothing."""
        field = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
        asked = self.max_completion_tokens or self.max_tokens
        if asked is not None and asked > cap:
            raise BadRequestError(
                f"{field}: {asked} is over this server's cap of {cap} generated tokens per "
                f"completion; send {field} of at most {cap}",
                field,
            )
        return asked or cap

    def call(self, max_tokens: int) -> ChatCall:
        json_output = None
        if isinstance(self.response_format, JsonObjectFormat):
            json_output = JsonOutput()
        elif isinstance(self.response_format, JsonSchemaFormat):
            json_output = JsonOutput(json_schema=self.response_format.json_schema.json_schema)
        return ChatCall(
            messages=[message.plain() for message in self.messages],
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=[self.stop] if isinstance(self.stop, str) else self.stop or [],
            seed=self.seed,
            json_output=json_output,
        )


class EmbeddingRequest(OpenAIRequest):
    model: str | None = None
    # Token ids parse too, so that they are refused with a 400 that says why.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self, max_inputs: int) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise BadRequestError("input: send at least one string", "input")
        if len(texts) > max_inputs:
            raise PayloadTooLargeError(
                f"input: {len(texts)} entries; the limit is {max_inputs} per request (split "
                "it, or use /v1/batches)",
                "input",
            )
        strings = [text for text in texts if isinstance(text, str)]
        if len(strings) != len(texts):
            raise BadRequestError(
                "input: token ids are not supported; send a string or a list of strings", "input"
            )
        return strings


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """OpenAI's base64 form is the little-endian float32 bytes; the SDK asks for it by default."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class OpenAIEndpoints:
    """Both endpoints over the configured models' engines, given validated requests; each
    returns a JSON-ready body and raises typed errors (`errors.py`)."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        engines: Mapping[str, OpenAIEngine],
        limits: LimitsConfig,
    ) -> None:
        self._runners: dict[str, Runner] = {model.name: model.runner for model in models}
        self._engines = engines
        self._limits = limits

    def chat_usage(self, request: ChatCompletionRequest) -> Usage:
        """What the completion takes from its key's buckets; a 400 over the tokens cap."""
        return Usage(texts=1, tokens=request.output_tokens(self._limits.max_chat_tokens))

    def embeddings_usage(self, request: EmbeddingRequest) -> Usage:
        """What the embeddings take from their key's buckets; a 413 over the inputs cap."""
        return Usage(texts=len(request.texts(self._limits.max_items_per_request)))

    async def chat_completions(
        self, request: ChatCompletionRequest, request_id: str
    ) -> dict[str, Any]:
        if request.stream:
            raise StreamNotSupportedError(
                "stream: streaming is not supported; send stream=false or leave it out", "stream"
            )
        if request.n not in (None, 1):
            raise BadRequestError(f"n: only n=1 is supported, got {request.n}", "n")
        model = self._model(request.model, "generate", CHAT_COMPLETIONS)
        max_tokens = request.output_tokens(self._limits.max_chat_tokens)
        output = await self._engines[model].chat(request.call(max_tokens))
        if isinstance(output, Rejection):
            raise BadRequestError(output.message)
        completion = ChatCompletion(
            id=f"chatcmpl-{request_id}",
            created=int(time.time()),
            model=model,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=output.text),
                    finish_reason=output.finish_reason,
                )
            ],
            usage=CompletionUsage(
                prompt_tokens=output.prompt_tokens,
                completion_tokens=output.completion_tokens,
                total_tokens=output.prompt_tokens + output.completion_tokens,
            ),
        )
        return completion.model_dump(mode="json")

    async def embeddings(self, request: EmbeddingRequest, request_id: str) -> dict[str, Any]:
        texts = request.texts(self._limits.max_items_per_request)
        model = self._model(request.model, "pooling", EMBEDDINGS)
        embedded = await self._engines[model].embeddings(texts)
        dimensions = embedded.vectors.shape[1]
        if request.dimensions not in (None, dimensions):
            raise BadRequestError(
                f"dimensions: model {model!r} returns {dimensions} dimensions and cannot shorten "
                f"them; send dimensions={dimensions} or leave it out",
                "dimensions",
            )
        encoding_format = request.encoding_format or "float"
        prompt_tokens = sum(embedded.prompt_tokens)
        listing = EmbeddingList(
            data=[
                EmbeddingItem(index=index, embedding=encoded(vector, encoding_format))
                for index, vector in enumerate(embedded.vectors)
            ],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )
        return listing.model_dump(mode="json")

    def _model(self, requested: str | None, runner: Runner, endpoint: str) -> str:
        """The configured model that answers: the one named, or the only one that can."""
        serving = sorted(name for name, kind in self._runners.items() if kind == runner)
        if requested is not None and requested not in self._runners:
            raise ModelNotFoundError(
                f"model {requested!r} does not exist; models are {sorted(self._runners)}", "model"
            )
        if requested in serving:
            return requested
        needs = f"{endpoint} needs {RUNNER_NOUNS[runner]}"
        if not serving:
            raise BadRequestError(
                f"no model here serves {endpoint}; {needs}, and the models here are "
                f"{sorted(self._runners)}",
                "model",
            )
        if requested is None:
            if len(serving) == 1:
                return serving[0]
            raise BadRequestError(f"model: name one of {serving} to serve {endpoint}", "model")
        raise BadRequestError(
            f"model {requested!r} cannot serve {endpoint}; {needs}: one of {serving}", "model"
        )
