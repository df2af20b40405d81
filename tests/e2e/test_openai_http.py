"""The official `openai` SDK, unmodified, against the OpenAI-compatible routes of both apps."""

import base64
import json

import numpy as np
import openai
import pytest

from tests.e2e.api_keys import ADMIN_KEY

pytestmark = pytest.mark.e2e
TEXTS = ["my card has not arrived yet", "what is the exchange rate for euros?"]


@pytest.fixture(scope="module")
def generative(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/generative/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def default(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0)


def test_chat_completion_answers_with_text_and_token_counts(generative):
    completion = generative.chat.completions.create(
        model="tiny-llama",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "My card has not come, what now?"},
        ],
        max_tokens=6,
        temperature=0,
        extra_headers={"X-Request-ID": "trace-chat-1"},
    )
    assert completion.id == "chatcmpl-trace-chat-1"
    assert completion.object == "chat.completion" and completion.model == "tiny-llama"
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    usage = completion.usage
    assert usage.completion_tokens == 6 and usage.prompt_tokens > 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_json_schema_response_format_gives_parseable_json(generative):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["card", "refund"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    completion = generative.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Label this: my card is lost"}],
        response_format={"type": "json_schema", "json_schema": {"name": "label", "schema": schema}},
        max_completion_tokens=32,
        temperature=0,
    )
    assert json.loads(completion.choices[0].message.content)["label"] in {"card", "refund"}


def test_embeddings_are_unit_vectors_in_float_and_base64(default, client):
    floats = default.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    vectors = np.array([item.embedding for item in floats.data])
    assert [item.index for item in floats.data] == [0, 1] and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert floats.model == "minilm"
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(TEXTS)

    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = default.embeddings.create(model="minilm", input=TEXTS)
    assert np.allclose([item.embedding for item in decoded.data], vectors, atol=1e-6)

    raw = client.post(
        "/v1/embeddings", json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"}
    )
    assert raw.status_code == 200, raw.text
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, vectors[0], atol=1e-6)


def test_streaming_is_refused(generative):
    with pytest.raises(openai.BadRequestError) as error:
        generative.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert error.value.status_code == 400
    assert error.value.code == "stream_not_supported" and error.value.param == "stream"


def test_an_unknown_model_is_not_found(generative):
    with pytest.raises(openai.NotFoundError) as error:
        generative.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert error.value.code == "model_not_found"
    assert "'gpt-4o' does not exist" in error.value.body["message"]


def test_embeddings_on_the_generative_app_are_refused(generative):
    with pytest.raises(openai.BadRequestError) as error:
        generative.embeddings.create(model="tiny-llama", input="hello")
    assert error.value.code == "invalid_request" and error.value.param == "model"
    assert "no model here serves /v1/embeddings" in error.value.body["message"]


def test_chat_on_the_embedding_app_is_refused(default):
    with pytest.raises(openai.BadRequestError) as error:
        default.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hi"}]
        )
    assert "no model here serves /v1/chat/completions" in error.value.body["message"]


def test_malformed_chat_is_a_422_naming_the_field(client):
    response = client.post(
        "/generative/v1/chat/completions",
        json={"model": "tiny-llama", "messages": [{"role": "robot", "content": "hi"}]},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["param"] == "messages.0.role"
