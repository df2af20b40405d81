"""Classifies a labelled CSV through capserve and prints accuracy, macro-F1, calibration error and
selective accuracy, per strategy.

    python loadtests/accuracy.py data/banking77/heldout.csv --url http://127.0.0.1:8000
    python loadtests/accuracy.py data/banking77/heldout.csv --start \\
        --strategy knn zero_shot trained_head --write

`--start` deploys the default app in a Ray of its own (result cache off) instead of calling a
running one; `--write` saves the figures to `loadtests/results/accuracy.{json,md}`.

ECE (expected calibration error, 10 equal-width bins) says how far the reported confidence is from
the observed accuracy: 0 is perfectly calibrated. Selective accuracy is the accuracy of the most
confident 80% of answers: what a team gets that routes the least confident 20% to a person.

Where the app answers a path through a label tree (the default app's `label_tree`), the same
figures are given for the top level (`parent_*`): the answer's first node, against the true
label's parent in `--label-tree`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import httpx

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capabilities.classification import STRATEGIES
from capabilities.label_tree import LabelTree, load_label_tree
from loadtests.apps import PROJECT_ROOT, uncached_default_app

RESULTS = PROJECT_ROOT / "loadtests" / "results"
BANKING77_TREE = PROJECT_ROOT / "data" / "banking77" / "label_tree.yaml"
COVERAGE = 0.8


def macro_f1(truth: list[str], predicted: list[str]) -> float:
    labels = set(truth) | set(predicted)
    true_positive = Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    predicted_count, truth_count = Counter(predicted), Counter(truth)
    scores = []
    for label in labels:
        precision = true_positive[label] / predicted_count[label] if predicted_count[label] else 0.0
        recall = true_positive[label] / truth_count[label] if truth_count[label] else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def expected_calibration_error(
    correct: list[bool], confidence: list[float], bins: int = 10
) -> float:
    total, error = len(correct), 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if low < c <= high or (b == 0 and c == 0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            error += len(members) / total * abs(accuracy - mean_confidence)
    return error


def selective_accuracy(correct: list[bool], confidence: list[float], coverage: float) -> float:
    """Accuracy of the `coverage` share of answers with the highest confidence (at least one);
    among equal confidences the earlier answers count first."""
    kept = max(1, round(coverage * len(correct)))
    order = sorted(range(len(correct)), key=lambda i: -confidence[i])[:kept]
    return sum(correct[i] for i in order) / kept


def quality(truth: list[str], predicted: list[str], confidence: list[float]) -> dict[str, float]:
    """Accuracy, macro-F1, ECE and selective accuracy of predictions against the true labels."""
    correct = [p == t for p, t in zip(predicted, truth, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct),
        "macro_f1": macro_f1(truth, predicted),
        "ece": expected_calibration_error(correct, confidence),
        "selective_accuracy": selective_accuracy(correct, confidence, COVERAGE),
    }


async def classify_all(
    url: str, texts: list[str], batch_size: int, concurrency: int, strategy: str | None
) -> tuple[str, list[dict]]:
    """The strategy that answered, and one result per text."""
    limit = asyncio.Semaphore(concurrency)
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def one(batch: list[str]) -> dict:
            async with limit:
                body: dict = {"texts": batch} | ({"strategy": strategy} if strategy else {})
                response = await http.post("/v1/classify", json=body)
                response.raise_for_status()
                return response.json()

        answers = await asyncio.gather(*(one(batch) for batch in batches))
    return answers[0]["strategy"], [result for answer in answers for result in answer["results"]]


def parent_quality(truth: list[str], results: list[dict], tree: LabelTree) -> dict[str, float]:
    """`quality` at the top level of the tree: each answer's first node against the true parent;
    empty where the answers carry no path."""
    if not all(result.get("path") for result in results):
        return {}
    figures = quality(
        [tree.path(label)[0] for label in truth],
        [result["path"][0]["label"] for result in results],
        [result["path"][0]["score"] for result in results],
    )
    return {f"parent_{key}": value for key, value in figures.items()}


def measure(
    url: str, texts: list[str], truth: list[str], strategy: str | None, args: argparse.Namespace
) -> dict[str, object]:
    started = time.perf_counter()
    answered_by, results = asyncio.run(
        classify_all(url, texts, args.batch_size, args.concurrency, strategy)
    )
    elapsed = time.perf_counter() - started
    predicted = [result["label"] for result in results]
    confidence = [result["confidence"] for result in results]
    tree, _ = load_label_tree(args.label_tree)
    figures = quality(truth, predicted, confidence) | parent_quality(truth, results, tree)
    return {
        "strategy": answered_by,
        "texts": len(texts),
        **{key: round(value, 4) for key, value in figures.items()},
        "seconds": round(elapsed, 2),
        "texts_per_second": round(len(texts) / elapsed, 1),
    }


def markdown(file: Path, rows: list[dict[str, object]], command: str) -> str:
    lines = [
        f"# Accuracy on `{file.name}`",
        "",
        f"`{command}`",
        "",
        (
            f"| strategy | level | accuracy | macro-F1 | ECE | selective accuracy "
            f"({COVERAGE:.0%}) | texts/s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        for level, prefix in (("leaf", ""), ("parent", "parent_")):
            if f"{prefix}accuracy" in r:
                lines.append(
                    f"| {r['strategy']} | {level} | {r[prefix + 'accuracy']:.3f} | "
                    f"{r[prefix + 'macro_f1']:.3f} | {r[prefix + 'ece']:.3f} | "
                    f"{r[prefix + 'selective_accuracy']:.3f} | {r['texts_per_second']} |"
                )
    if len(rows) > 1:
        note = (
            "texts/s: the strategies after the first reuse the texts' embeddings the ingress "
            "remembers, so only the first row measures embedding."
        )
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, help="labelled CSV file")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--start", action="store_true", help="deploy the default app instead of calling --url"
    )
    parser.add_argument(
        "--cache-dir",
        default=str(Path("~/.cache/capserve").expanduser()),
        help="with --start: the app's cache_dir (example vectors and heads are reused from it)",
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument(
        "--label-tree",
        type=Path,
        default=BANKING77_TREE,
        help="the tree whose top level parent_* figures are measured at, where answers have paths",
    )
    parser.add_argument(
        "--strategy", nargs="+", choices=STRATEGIES, help="one run each; default: the app's"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS}/accuracy.*")
    args = parser.parse_args()

    with args.csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row[args.text_column] for row in rows]
    truth = [row[args.label_column] for row in rows]
    app: AbstractContextManager[str] = (
        uncached_default_app("capserve-accuracy", args.cache_dir)
        if args.start
        else nullcontext(args.url)
    )
    with app as url:
        figures = [
            {"file": str(args.csv), **measure(url, texts, truth, strategy, args)}
            for strategy in args.strategy or [None]
        ]
    if args.write:
        command = "python " + " ".join(["loadtests/accuracy.py", *sys.argv[1:]])
        (RESULTS / "accuracy.json").write_text(json.dumps(figures, indent=2) + "\n")
        (RESULTS / "accuracy.md").write_text(markdown(args.csv, figures, command))
    for entry in figures:
        if args.json:
            print(json.dumps(entry))
            continue
        for key, value in entry.items():
            print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
        print()


if __name__ == "__main__":
    main()
