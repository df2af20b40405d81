"""The OpenAI endpoints over fake engines: request validation, model choice, errors, shapes."""

import base64
from collections.abc import Sequence

import numpy as np
import openai.types
import openai.types.chat
import pytest
from pydantic import ValidationError

from capabilities.priority import Priority, current_priority
from deployments.config import LimitsConfig, ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, JsonOutput, Rejection
from deployments.http.errors import ApiError
from deployments.http.openai_api import ChatCompletionRequest, EmbeddingRequest, OpenAIEndpoints
from deployments.http.rate_limit import Usage
from tests.fakes import FakeEngine

USER = [{"role": "user", "content": "hello there"}]


class FakeOpenAIEngine:
    """Answers chat with a fixed reply (or rejection) and embeds with the fake bag of words."""

    def __init__(self, reply: ChatOutput | Rejection | None = None) -> None:
        self.reply = reply or ChatOutput(
            text="hi", finish_reason="stop", prompt_tokens=7, completion_tokens=2
        )
        self.calls: list[ChatCall] = []
        self.priorities: list[Priority] = []

    async def chat(self, call: ChatCall) -> ChatOutput | Rejection:
        self.calls.append(call)
        self.priorities.append(current_priority())
        return self.reply

    async def embeddings(self, texts: Sequence[str]) -> Embeddings:
        self.priorities.append(current_priority())
        vectors = await FakeEngine().embed(texts)
        return Embeddings(vectors=vectors, prompt_tokens=[len(text.split()) for text in texts])


def model(name: str, runner: str) -> ModelConfig:
    return ModelConfig(name=name, model=f"org/{name}", runner=runner)


def endpoints(*models: ModelConfig, reply: ChatOutput | Rejection | None = None):
    engines = {m.name: FakeOpenAIEngine(reply) for m in models}
    return OpenAIEndpoints(models, engines, LimitsConfig()), engines


async def chat(
    api: OpenAIEndpoints, payload: object, request_id: str, priority: Priority = "normal"
) -> dict:
    request = ChatCompletionRequest.model_validate(payload)
    return await api.chat_completions(request, request_id, priority)


async def embed(
    api: OpenAIEndpoints, payload: object, request_id: str, priority: Priority = "normal"
) -> dict:
    return await api.embeddings(EmbeddingRequest.model_validate(payload), request_id, priority)


def raised(error: pytest.ExceptionInfo) -> tuple[int, str, str]:
    assert isinstance(error.value, ApiError)
    return error.value.status_code, error.value.code, error.value.message


async def test_chat_completion_has_openai_shape_and_counts():
    api, _ = endpoints(model("llama", "generate"), model("minilm", "pooling"))
    body = await chat(api, {"model": "llama", "messages": USER}, "req-1")
    assert body["id"] == "chatcmpl-req-1"
    assert body["object"] == "chat.completion" and body["model"] == "llama"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "hi"


async def test_chat_request_becomes_the_engine_call():
    api, engines = endpoints(model("llama", "generate"))
    await chat(
        api,
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "ok", "name": "bot"},
            ],
            "max_tokens": 50,
            "max_completion_tokens": 20,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "\n",
            "seed": 3,
            "n": 1,
            "stream": False,
            "logit_bias": {"1": 2},
            "user": "someone",
        },
        "req",
    )
    [call] = engines["llama"].calls
    assert [(m.role, m.content) for m in call.messages] == [
        ("system", "be brief"),
        ("user", "a\nb"),
        ("assistant", "ok"),
    ]
    assert (call.max_tokens, call.temperature, call.top_p) == (20, 0, 0.5)
    assert (call.stop, call.seed, call.json_output) == (["\n"], 3, None)


async def test_chat_defaults_are_openai_defaults_and_nulls_mean_unset():
    api, engines = endpoints(model("llama", "generate"))
    await chat(api, {"messages": USER, "temperature": None, "stop": None}, "req")
    [call] = engines["llama"].calls
    # No max_tokens: the server's cap, as OpenAI fills in what the model allows.
    assert call.max_tokens == LimitsConfig().max_chat_tokens
    assert (call.temperature, call.top_p, call.stop) == (1.0, 1.0, [])


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("response_format", "json_output"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, JsonOutput()),
        (
            {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}},
            JsonOutput(json_schema=SCHEMA),
        ),
    ],
)
async def test_response_format_maps_to_structured_output(response_format, json_output):
    api, engines = endpoints(model("llama", "generate"))
    await chat(api, {"messages": USER, "response_format": response_format}, "req")
    assert engines["llama"].calls[0].json_output == json_output


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"messages": USER, "temperature": 3},
        {"messages": USER, "max_tokens": 0},
        {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}},
        {"messages": USER, "response_format": {"type": "yaml"}},
        [USER],
    ],
)
async def test_malformed_chat_requests_fail_validation(payload):
    api, engines = endpoints(model("llama", "generate"))
    with pytest.raises(ValidationError):
        await chat(api, payload, "req")
    assert engines["llama"].calls == []


async def test_streaming_is_refused_with_its_own_code():
    api, _ = endpoints(model("llama", "generate"))
    with pytest.raises(ApiError) as error:
        await chat(api, {"messages": USER, "stream": True}, "req")
    assert raised(error)[:2] == (400, "stream_not_supported")
    assert error.value.param == "stream"


async def test_more_than_one_choice_is_refused():
    api, _ = endpoints(model("llama", "generate"))
    with pytest.raises(ApiError) as error:
        await chat(api, {"messages": USER, "n": 2}, "req")
    assert raised(error)[:2] == (400, "invalid_request")
    assert "only n=1" in error.value.message and error.value.param == "n"


async def test_an_engine_rejection_is_a_bad_request():
    api, _ = endpoints(model("llama", "generate"), reply=Rejection(message="no chat template"))
    with pytest.raises(ApiError) as error:
        await chat(api, {"messages": USER}, "req")
    assert raised(error) == (400, "invalid_request", "no chat template")


async def test_unknown_model_is_not_found():
    api, _ = endpoints(model("llama", "generate"), model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await chat(api, {"model": "gpt-4o", "messages": USER}, "req")
    status, code, message = raised(error)
    assert (status, code) == (404, "model_not_found")
    assert "'gpt-4o'" in message and "['llama', 'minilm']" in message


async def test_chat_on_an_embedding_model_names_the_models_that_can():
    api, _ = endpoints(model("llama", "generate"), model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await chat(api, {"model": "minilm", "messages": USER}, "req")
    status, _, message = raised(error)
    assert status == 400
    assert "'minilm' cannot serve /v1/chat/completions" in message and "['llama']" in message


async def test_model_may_be_omitted_only_when_one_model_can_serve():
    api, _ = endpoints(model("llama", "generate"), model("minilm", "pooling"))
    assert (await chat(api, {"messages": USER}, "req"))["model"] == "llama"
    assert (await embed(api, {"input": "x"}, "req"))["model"] == "minilm"

    two, _ = endpoints(model("llama", "generate"), model("qwen", "generate"))
    with pytest.raises(ApiError) as error:
        await chat(two, {"messages": USER}, "req")
    assert raised(error)[0] == 400 and "['llama', 'qwen']" in error.value.message

    none, _ = endpoints(model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await chat(none, {"messages": USER}, "req")
    assert raised(error)[0] == 400
    assert "no model here serves /v1/chat/completions" in error.value.message


async def test_embeddings_have_openai_shape_and_token_counts():
    api, _ = endpoints(model("minilm", "pooling"))
    texts = ["my card is lost", "top up"]
    body = await embed(api, {"model": "minilm", "input": texts, "user": "x"}, "req")
    assert body["object"] == "list" and body["model"] == "minilm"
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    expected = await FakeEngine().embed(texts)
    assert np.allclose([d["embedding"] for d in body["data"]], expected)
    parsed = openai.types.CreateEmbeddingResponse.model_validate(body)
    assert len(parsed.data[0].embedding) == expected.shape[1]


async def test_base64_embeddings_are_little_endian_float32():
    api, _ = endpoints(model("minilm", "pooling"))
    floats = await embed(api, {"input": "my card is lost"}, "req")
    encoded = await embed(api, {"input": "my card is lost", "encoding_format": "base64"}, "r")
    vector = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vector, np.array(floats["data"][0]["embedding"], dtype=np.float32))


async def test_dimensions_are_accepted_only_when_they_are_the_models():
    api, _ = endpoints(model("minilm", "pooling"))
    body = await embed(api, {"input": "x", "dimensions": 64}, "req")
    assert len(body["data"][0]["embedding"]) == 64
    with pytest.raises(ApiError) as error:
        await embed(api, {"input": "x", "dimensions": 32}, "req")
    assert raised(error)[0] == 400 and error.value.param == "dimensions"
    assert "returns 64 dimensions" in error.value.message


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
async def test_token_id_inputs_are_refused(tokens):
    api, _ = endpoints(model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await embed(api, {"input": tokens}, "req")
    assert raised(error)[0] == 400 and "token ids are not supported" in error.value.message


@pytest.mark.parametrize(
    "payload",
    [{"input": ["a", 1]}, {"input": None}, {}, {"input": "a", "encoding_format": "int8"}],
)
async def test_malformed_embedding_requests_fail_validation(payload):
    api, _ = endpoints(model("minilm", "pooling"))
    with pytest.raises(ValidationError):
        await embed(api, payload, "req")


async def test_an_empty_input_list_is_refused():
    api, _ = endpoints(model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await embed(api, {"input": []}, "req")
    assert raised(error)[0] == 400 and error.value.param == "input"


async def test_embeddings_on_a_generative_model_name_the_models_that_can():
    api, _ = endpoints(model("llama", "generate"), model("minilm", "pooling"))
    with pytest.raises(ApiError) as error:
        await embed(api, {"model": "llama", "input": "x"}, "req")
    status, _, message = raised(error)
    assert status == 400
    assert "'llama' cannot serve /v1/embeddings" in message and "['minilm']" in message


def test_embeddings_split_back_per_caller_in_order():
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    parts = Embeddings(vectors, [1, 2, 3, 4, 5]).split([2, 0, 3])
    assert [part.prompt_tokens for part in parts] == [[1, 2], [], [3, 4, 5]]
    assert [part.vectors.shape for part in parts] == [(2, 2), (0, 2), (3, 2)]
    assert np.array_equal(np.concatenate([part.vectors for part in parts]), vectors)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_chat_tokens_over_the_cap_are_refused_naming_it(field):
    limits = LimitsConfig(max_chat_tokens=64)
    engine = FakeOpenAIEngine()
    api = OpenAIEndpoints([model("llama", "generate")], {"llama": engine}, limits)
    request = ChatCompletionRequest.model_validate({"messages": USER, field: 65})
    with pytest.raises(ApiError) as error:
        await api.chat_completions(request, "req", "normal")
    status, _, message = raised(error)
    assert status == 400 and error.value.param == field
    assert "cap of 64" in message and f"send {field} of at most 64" in message
    assert engine.calls == []
    at_cap = ChatCompletionRequest.model_validate({"messages": USER, field: 64})
    await api.chat_completions(at_cap, "req", "normal")
    assert engine.calls[0].max_tokens == 64


async def test_chat_usage_counts_one_text_and_the_tokens_it_may_generate():
    api = OpenAIEndpoints([model("llama", "generate")], {}, LimitsConfig(max_chat_tokens=100))
    asked = ChatCompletionRequest.model_validate({"messages": USER, "max_tokens": 30})
    unset = ChatCompletionRequest.model_validate({"messages": USER})
    assert api.chat_usage(asked) == Usage(texts=1, tokens=30)
    assert api.chat_usage(unset) == Usage(texts=1, tokens=100)


async def test_embedding_inputs_over_the_cap_are_413_naming_it():
    limits = LimitsConfig(max_items_per_request=3)
    api = OpenAIEndpoints([model("minilm", "pooling")], {"minilm": FakeOpenAIEngine()}, limits)
    request = EmbeddingRequest.model_validate({"input": ["a", "b", "c", "d"]})
    with pytest.raises(ApiError) as error:
        await api.embeddings(request, "req", "normal")
    status, code, message = raised(error)
    assert (status, code, error.value.param) == (413, "payload_too_large", "input")
    assert "4 entries; the limit is 3 per request" in message
    with pytest.raises(ApiError):
        api.embeddings_usage(request)
    three = EmbeddingRequest.model_validate({"input": ["a", "b", "c"]})
    assert api.embeddings_usage(three) == Usage(texts=3)
    assert len((await api.embeddings(three, "req", "normal"))["data"]) == 3
