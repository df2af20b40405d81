"""Gemma 3 270M, a real base model built from the GGUF on PyPI (tests/gemma.py), served by the
real vLLM generate runner. A base model follows a task it is shown, so prompts carry Banking77
examples (from examples.csv) of every label."""

import pytest

from capabilities.classification import LABEL_CUE
from deployments.engine.calls import ChatCall, ChatMessage, ChatOutput
from deployments.engine.vllm_engine import chat_prompt
from loadtests.apps import GEMMA_CHAT_TEMPLATE, gemma_model
from loadtests.generative_accuracy import classify_few_shot, few_shot_examples
from tests.integration.conftest import started

pytestmark = pytest.mark.integration
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
OBVIOUS = {
    "My card still hasn't been delivered, when does it arrive?": "card_arrival",
    "I lost my card yesterday, please block it.": "lost_or_stolen_card",
    "What is your exchange rate for euros today?": "exchange_rate",
    "My top-up did not work, the money was not added.": "top_up_failed",
}


@pytest.fixture(scope="module")
def gemma(gemma_path):
    yield from started(gemma_model(gemma_path))


async def test_choose_scores_every_label_in_one_step_and_picks_the_obvious_one(gemma):
    assert await gemma.choice_keys(LABELS, LABEL_CUE) is None, "first tokens should differ"
    shots = few_shot_examples(LABELS, per_label=5)
    results = await classify_few_shot(gemma, LABELS, shots, list(OBVIOUS))
    for result, expected in zip(results, OBVIOUS.values(), strict=True):
        assert result.decoding == "one_step"
        assert set(result.probabilities) == set(LABELS)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.choice == expected == max(result.probabilities, key=result.probabilities.get)


async def test_labels_sharing_a_first_token_are_answered_by_key(gemma):
    labels = ["card_arrival", "card_linking", "card_not_working"]
    keys = await gemma.choice_keys(labels, LABEL_CUE)
    assert keys is not None and len(set(keys)) == len(labels)
    shots = few_shot_examples(labels, per_label=5)
    text = "Where is my new card? It should have come by post by now."
    [result] = await classify_few_shot(gemma, labels, shots, [text])
    assert result.decoding == "one_step" and set(result.probabilities) == set(labels)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.choice == "card_arrival"


async def test_generate_json_follows_the_schema(gemma):
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": LABELS},
            "urgent": {"type": "boolean"},
        },
        "required": ["label", "urgent"],
        "additionalProperties": False,
    }
    prompt = (
        'Message: I lost my card!\nJSON: {"label": "lost_or_stolen_card", "urgent": true}\n\n'
        "Message: my card is late\nJSON: "
    )
    [result] = await gemma.generate_json([prompt], schema)
    assert set(result) == {"label", "urgent"}
    assert result["label"] in LABELS and isinstance(result["urgent"], bool)


async def test_chat_renders_gemmas_turns_from_the_configured_template(gemma):
    # The GGUF carries no chat template: the config gives Gemma's, which writes <bos> first.
    messages = [
        ChatMessage(role="system", content="Answer briefly."),
        ChatMessage(role="user", content="My card has not arrived. What should I do?"),
    ]
    call = ChatCall(messages=messages, max_tokens=8, temperature=0)
    [output] = await gemma.chat([call])
    assert isinstance(output, ChatOutput), output
    assert output.text and output.completion_tokens <= 8
    assert output.finish_reason in {"stop", "length"}
    prompt = chat_prompt(gemma._llm.tokenizer, messages, gemma.name, GEMMA_CHAT_TEMPLATE)
    assert isinstance(prompt, str) and prompt.startswith("<bos><start_of_turn>user\nAnswer")
    tokens = gemma._llm.tokenizer.encode(prompt, add_special_tokens=False)
    assert tokens.count(gemma._llm.tokenizer.bos_token_id) == 1
    assert output.prompt_tokens == len(tokens)
