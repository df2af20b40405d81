"""`models[].chat_template`: a Jinja template given inline or by file, checked with the config,
rendering chat prompts instead of the tokenizer's own (a base model's has none)."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from deployments.config import ConfigError, ModelConfig, parse_app_config
from deployments.engine.calls import ChatMessage, Rejection
from deployments.engine.vllm_engine import chat_prompt
from loadtests.apps import GEMMA_CHAT_TEMPLATE

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
LABELS = ["a", "b"]
HI = [ChatMessage(role="user", content="hi")]


def model(**settings) -> ModelConfig:
    return ModelConfig(name="lm", model="some/hub-id", runner="generate", **settings)


def tokenizer(own_template: str | None = None, bos: str = "<s>") -> PreTrainedTokenizerFast:
    words = Tokenizer(WordLevel({bos: 0, "[UNK]": 1}, unk_token="[UNK]"))
    loaded = PreTrainedTokenizerFast(tokenizer_object=words, bos_token=bos, unk_token="[UNK]")
    loaded.chat_template = own_template
    return loaded


def test_an_inline_template_is_kept_as_given():
    assert model(chat_template=TEMPLATE).chat_template == TEMPLATE


def test_a_template_file_is_read_when_the_config_is(tmp_path: Path):
    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE)
    assert model(chat_template=str(path)).chat_template == TEMPLATE


def test_a_path_to_no_file_is_refused_with_how_to_fix_it(tmp_path: Path):
    with pytest.raises(ValueError, match="not a template .* nor a readable file") as refused:
        model(chat_template=str(tmp_path / "missing.jinja"))
    assert "give the template inline or the path of its file" in str(refused.value)


def test_a_broken_template_stops_start_up_naming_the_field():
    args = {
        "models": [{**model().model_dump(), "chat_template": "{% for m in messages %}"}],
        "capabilities": [
            {
                "name": "classification",
                "settings": {"strategy": "generative", "generative_model": "lm", "labels": LABELS},
            }
        ],
    }
    problem = r"models\.0\.chat_template: .*not a valid Jinja template"
    with pytest.raises(ConfigError, match=problem):
        parse_app_config(args)


def test_the_template_leaves_the_model_identity_alone():
    # Only chat renders it, and chat answers are never cached: the caches keyed on the identity
    # (example vectors, capability results) hold the same outputs with or without it.
    assert model(chat_template=TEMPLATE).identity == model().identity


def test_the_configured_template_renders_over_the_tokenizers_own():
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_prompt(tokenizer(own), HI, "lm") == "hi"
    assert chat_prompt(tokenizer(own), HI, "lm", TEMPLATE) == "<s>[user] hi\n[assistant] "
    assert chat_prompt(tokenizer(), HI, "lm", TEMPLATE) == "<s>[user] hi\n[assistant] "


def test_without_any_template_chat_is_refused_saying_how_to_fix_it():
    refused = chat_prompt(tokenizer(), HI, "lm")
    assert isinstance(refused, Rejection)
    assert "model 'lm' has no chat template" in refused.message
    assert "models[].chat_template" in refused.message


def test_gemmas_template_writes_its_turns_with_bos_and_folds_the_system_message():
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Where is my card? "),
        ChatMessage(role="assistant", content="On its way."),
        ChatMessage(role="user", content="When?"),
    ]
    assert chat_prompt(tokenizer(bos="<bos>"), messages, "gemma", GEMMA_CHAT_TEMPLATE) == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhere is my card?<end_of_turn>\n"
        "<start_of_turn>model\nOn its way.<end_of_turn>\n"
        "<start_of_turn>user\nWhen?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemmas_template_refuses_turns_that_do_not_alternate():
    messages = [ChatMessage(role="assistant", content="Hello"), *HI]
    refused = chat_prompt(tokenizer(bos="<bos>"), messages, "gemma", GEMMA_CHAT_TEMPLATE)
    assert isinstance(refused, Rejection) and "roles must alternate" in refused.message
