"""A tiny random Llama built locally, served by the real vLLM generate runner."""

import json

import pytest

from capabilities.classification import ClassificationSettings, Classifier
from deployments.engine.calls import ChatCall, ChatMessage, ChatOutput, JsonOutput, Rejection
from loadtests.apps import tiny_llama_model
from tests.integration.conftest import started

pytestmark = pytest.mark.integration
LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card", "top_up", "refund"]
# First tokens " card", " lost", " top", " refund" under the tiny Llama's tokenizer: all distinct.
DISTINCT = ["card_arrival", "lost_or_stolen_card", "top_up", "refund"]
# " card" starts both.
COLLIDING = ["card_arrival", "card_linking", "top_up"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_path):
    yield from started(tiny_llama_model(tiny_llama_path))


async def test_choose_returns_only_allowed_labels_with_a_distribution(tiny_llama):
    prompts = [f"Text: query number {i} about my card\nLabel:" for i in range(12)]
    results = await tiny_llama.choose(prompts, LABELS)
    assert len(results) == len(prompts)
    for result in results:
        assert result.choice in LABELS
        assert set(result.probabilities) == set(LABELS)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0 <= p <= 1 for p in result.probabilities.values())


async def test_choose_works_for_labels_sharing_prefixes(tiny_llama):
    labels = ["card", "card_arrival", "card_arrival_delay"]
    [result] = await tiny_llama.choose(["Text: where is it\nLabel:"], labels)
    assert result.choice in labels
    assert result.decoding == "multi_step"
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


async def test_labels_with_distinct_first_tokens_are_scored_in_one_step(tiny_llama):
    prompts = [f"Text: query number {i} about my card\nLabel:" for i in range(6)]
    assert await tiny_llama.choice_keys(DISTINCT, "Label:") is None
    for result in await tiny_llama.choose(prompts, DISTINCT):
        assert result.decoding == "one_step"
        assert set(result.probabilities) == set(DISTINCT)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.choice == max(result.probabilities, key=result.probabilities.__getitem__)


async def test_one_step_probabilities_are_the_models_own(tiny_llama, tiny_llama_path):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    prompt = "Classify.\nText: my card has not come\nLabel:"
    [result] = await tiny_llama.choose([prompt], DISTINCT)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_path, torch_dtype=torch.float32)
    firsts = [tokenizer.encode(" " + label, add_special_tokens=False)[0] for label in DISTINCT]
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode(prompt)])).logits[0, -1]
    expected = torch.softmax(logits[firsts], dim=-1).tolist()
    assert [result.probabilities[label] for label in DISTINCT] == pytest.approx(expected, abs=1e-5)


async def test_colliding_labels_are_scored_in_one_step_through_keys(tiny_llama):
    keys = await tiny_llama.choice_keys(COLLIDING, "Label:")
    assert keys is not None and len(set(keys)) == len(COLLIDING)
    listed = "".join(f"{key}. {label}\n" for key, label in zip(keys, COLLIDING, strict=True))
    [keyed] = await tiny_llama.choose([f"{listed}Text: my card\nLabel:"], COLLIDING, keys)
    [unkeyed] = await tiny_llama.choose(["Text: my card\nLabel:"], COLLIDING)
    for result, decoding in ((keyed, "one_step"), (unkeyed, "multi_step")):
        assert result.decoding == decoding
        assert result.choice in COLLIDING and set(result.probabilities) == set(COLLIDING)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("labels", [DISTINCT, COLLIDING], ids=["one_step", "multi_step"])
async def test_a_prompts_distribution_does_not_depend_on_its_batch(tiny_llama, labels):
    prompt = "Text: where is my new card\nLabel:"
    others = [f"Text: other message {i} about a top up\nLabel:" for i in range(7)]
    [alone] = await tiny_llama.choose([prompt], labels)
    batched = (await tiny_llama.choose([*others[:3], prompt, *others[3:]], labels))[3]
    assert batched.choice == alone.choice
    for label in labels:
        assert batched.probabilities[label] == pytest.approx(alone.probabilities[label], abs=1e-4)


async def test_generate_json_follows_the_schema(tiny_llama):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": LABELS}, "urgent": {"type": "boolean"}},
        "required": ["label", "urgent"],
        "additionalProperties": False,
    }
    results = await tiny_llama.generate_json(["Answer in JSON: ", "Another: "], schema)
    for result in results:
        assert set(result) == {"label", "urgent"}
        assert result["label"] in LABELS
        assert isinstance(result["urgent"], bool)


@pytest.mark.parametrize(("answer_keys", "decoding"), [(True, "one_step"), (False, "multi_step")])
async def test_generative_strategy_classifies_with_the_real_engine(
    tiny_llama, answer_keys, decoding
):
    settings = ClassificationSettings(
        strategy="generative",
        generative_model="tiny-llama",
        labels=LABELS,
        top_k=3,
        answer_keys=answer_keys,
    )
    classifier = Classifier(settings, embedder=None, generator=tiny_llama)
    await classifier.load()
    results = await classifier.classify(
        ["my card never came", "refund please", "my card never came"]
    )
    assert [r.label in LABELS for r in results] == [True] * 3
    # LABELS' first tokens collide under the tiny Llama's tokenizer: with keys the prompt lists
    # them and one step scores every label; without, labels are decoded by name.
    assert [r.decoding for r in results] == [decoding] * 3
    assert results[0] == results[2]
    assert all(r.top_k[0].label == r.label and len(r.top_k) <= 3 for r in results)


def user_says(text: str, **settings) -> ChatCall:
    return ChatCall(messages=[ChatMessage(role="user", content=text)], **settings)


async def test_chat_counts_tokens_and_stops_at_max_tokens(tiny_llama, tiny_llama_path):
    from transformers import AutoTokenizer

    [output] = await tiny_llama.chat([user_says("my card has not come", max_tokens=5)])
    assert isinstance(output, ChatOutput), output
    assert output.text and output.completion_tokens == 5 and output.finish_reason == "length"
    prompt = AutoTokenizer.from_pretrained(tiny_llama_path).apply_chat_template(
        [{"role": "user", "content": "my card has not come"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == "user: my card has not come\nassistant: "
    assert output.prompt_tokens == len(tiny_llama._llm.tokenizer.encode(prompt))


async def test_chat_json_schema_output_parses(tiny_llama):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": LABELS}, "urgent": {"type": "boolean"}},
        "required": ["label", "urgent"],
        "additionalProperties": False,
    }
    call = user_says(
        "classify: lost card",
        temperature=0,
        max_tokens=64,
        json_output=JsonOutput(json_schema=schema),
    )
    [output] = await tiny_llama.chat([call])
    assert isinstance(output, ChatOutput), output
    answer = json.loads(output.text)
    assert answer["label"] in LABELS and isinstance(answer["urgent"], bool)
    assert output.finish_reason == "stop"


async def test_a_refused_chat_call_does_not_fail_the_others(tiny_llama):
    bad_schema = user_says("hi", json_output=JsonOutput(json_schema={"type": "frobnicate"}))
    outputs = await tiny_llama.chat(
        [user_says("card " * 5000, max_tokens=4), bad_schema, user_says("hi", max_tokens=4)]
    )
    assert [type(output) for output in outputs] == [Rejection, Rejection, ChatOutput]
    assert "maximum context length" in outputs[0].message
    assert "frobnicate" in outputs[1].message


def test_chat_prompt_refuses_a_tokenizer_without_template(tiny_llama_path):
    from transformers import AutoTokenizer

    from deployments.engine.vllm_engine import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    messages = [ChatMessage(role="user", content="hi")]
    assert chat_prompt(tokenizer, messages, "tiny") == "user: hi\nassistant: "
    tokenizer.chat_template = None
    refused = chat_prompt(tokenizer, messages, "tiny")
    assert isinstance(refused, Rejection) and "has no chat template" in refused.message
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    refused = chat_prompt(tokenizer, messages, "tiny")
    assert isinstance(refused, Rejection) and "roles must alternate" in refused.message
