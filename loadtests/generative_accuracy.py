"""Generative classification on Banking77 with Gemma 3 270M: accuracy, macro-F1 and ECE.

    python loadtests/generative_accuracy.py [--texts 300] [--shots-per-label 3]

One raw vLLM engine (no Serve) on the checkpoint tests/gemma.py builds, with the lean settings of
`loadtests.apps.gemma_model`. A base model follows a task it is shown: every prompt lists the 77
labels (with the keys the engine asks for, where first tokens collide) and a few examples per label
from examples.csv, interleaved so no label comes last every time, then one held-out text. The
static part comes first, so prefix caching computes it once. Held-out texts are a seeded sample of
heldout.csv, which no example comes from. Writes
`loadtests/results/generative_accuracy_<answer>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capabilities.classification import LABEL_CUE, LabelSpec, generative_prompt
from capabilities.engine import ChoiceResult, GenerativeEngine
from loadtests.accuracy import quality
from loadtests.apps import PROJECT_ROOT, gemma_model, use_app_environment
from loadtests.bench import INSTRUCTION, read_texts
from loadtests.process_usage import process_name
from tests.gemma import build_gemma


class Report(BaseModel):
    command: str
    model: str
    engine_args: dict[str, object]
    labels: int
    shots_per_label: int
    prompt_tokens: int = Field(description="The longest prompt's.")
    texts: int
    accuracy: float
    macro_f1: float
    ece: float
    selective_accuracy: float = Field(description="Accuracy of the most confident 80%.")
    decoding: dict[str, int]
    build_s: float
    load_s: float
    classify_s: float
    texts_per_s: float
    worker_rss_gib: float


def few_shot_examples(labels: Sequence[str], per_label: int) -> list[tuple[str, str]]:
    """The first `per_label` examples.csv texts of each label, as (text, label), in rounds of one
    per label: grouped by label, the label of the last group would pull every answer its way."""
    by_label: dict[str, list[str]] = {label: [] for label in labels}
    for text, label in zip(
        read_texts("examples.csv"), read_texts("examples.csv", "category"), strict=True
    ):
        if label in by_label and len(by_label[label]) < per_label:
            by_label[label].append(text)
    return [(by_label[label][i], label) for i in range(per_label) for label in labels]


async def classify_few_shot(
    engine: GenerativeEngine,
    labels: Sequence[str],
    shots: Sequence[tuple[str, str]],
    texts: Sequence[str],
    by_key: bool = True,
) -> list[ChoiceResult]:
    """Each text classified by a prompt showing `shots`, answered by key where the engine asks
    for keys (one decode step) unless `by_key` is off (then by name, token by token)."""
    keys = await engine.choice_keys(labels, LABEL_CUE) if by_key else None
    specs = [LabelSpec(name=label) for label in labels]
    prompts = [generative_prompt(INSTRUCTION, specs, text, keys, shots) for text in texts]
    # One prompt alone first: prompts started together would each compute the shared prefix.
    first = await engine.choose(prompts[:1], labels, keys)
    return first + await engine.choose(prompts[1:], labels, keys)


def worker_rss_gib() -> float:
    """The model's process: vLLM's worker, or its engine core where the worker runs inside it."""
    workers = [
        process.memory_info().rss
        for process in psutil.Process().children(recursive=True)
        if process_name(process) in ("VLLM::Worker", "VLLM::EngineCore")
    ]
    return round(max(workers) / 2**30, 2)


def markdown(report: Report) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in report.model_dump().items())
    return f"| measure | value |\n| --- | --- |\n{rows}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=300, help="held-out texts to classify")
    parser.add_argument("--shots-per-label", type=int, default=3)
    parser.add_argument(
        "--answer",
        choices=["key", "name"],
        default="key",
        help="key: one decode step over the keys the engine gives colliding labels; name: the "
        "label itself, decoded token by token",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    args = parser.parse_args()

    use_app_environment()
    from deployments.engine.vllm_engine import VLLMEngine

    held_out = list(
        zip(read_texts("heldout.csv"), read_texts("heldout.csv", "category"), strict=True)
    )
    sample = random.Random(args.seed).sample(held_out, min(args.texts, len(held_out)))
    texts, truth = [text for text, _ in sample], [label for _, label in sample]
    labels = sorted(set(read_texts("examples.csv", "category")))
    shots = few_shot_examples(labels, args.shots_per_label)

    started = time.perf_counter()
    config = gemma_model(build_gemma())
    built = time.perf_counter()
    prompt_tokens: list[int] = []
    engine = VLLMEngine(config, count_tokens=lambda prompt, _: prompt_tokens.append(prompt))
    loaded = time.perf_counter()
    try:
        results = asyncio.run(
            classify_few_shot(engine, labels, shots, texts, by_key=args.answer == "key")
        )
        done = time.perf_counter()
        rss = worker_rss_gib()
    finally:
        engine.shutdown()

    predicted = [result.choice for result in results]
    confidence = [result.probabilities[result.choice] for result in results]
    report = Report(
        command="python loadtests/generative_accuracy.py " + " ".join(sys.argv[1:]),
        model=config.name,
        engine_args=config.engine_args.model_dump(exclude_none=True),
        labels=len(labels),
        shots_per_label=args.shots_per_label,
        prompt_tokens=max(prompt_tokens),
        texts=len(texts),
        **{key: round(value, 4) for key, value in quality(truth, predicted, confidence).items()},
        decoding=dict(Counter(result.decoding for result in results)),
        build_s=round(built - started, 1),
        load_s=round(loaded - built, 1),
        classify_s=round(done - loaded, 1),
        texts_per_s=round(len(texts) / (done - loaded), 2),
        worker_rss_gib=rss,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"generative_accuracy_{args.answer}"
    (args.out / f"{stem}.json").write_text(report.model_dump_json(indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(report.model_dump_json(), flush=True)


if __name__ == "__main__":
    main()
