"""Builds a tiny random BERT sequence classifier with a locally trained WordPiece tokenizer.

Nothing is fetched from a hub: the weights are random and the tokenizer is trained on the
Banking77 texts shipped in data/. It is useless for quality but runs the real vLLM pooling
runner's classify task, with labels from its `id2label`, in seconds. Heads are 64 wide: vLLM's
CPU attention refuses 16.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_llama import _corpus_lines

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed", "exchange_rate"]
VOCAB_SIZE = 2048


def build_tiny_bert(target: Path) -> Path:
    """Writes config, random weights and tokenizer to `target` and returns it."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(
        _corpus_lines(), trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=special)
    )
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, do_lower_case=True)
    tokenizer.save_pretrained(target)

    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        # Wider than BERT's 0.02, so that different texts get clearly different logits.
        initializer_range=0.3,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(target, safe_serialization=True)
    return target
