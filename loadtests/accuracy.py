"""Classifies a labelled CSV through a running capserve and prints accuracy, macro-F1 and ECE.

    python loadtests/accuracy.py data/banking77/heldout.csv --url http://127.0.0.1:8000

ECE (expected calibration error, 10 equal-width bins) says how far the reported confidence is from
the observed accuracy: 0 is perfectly calibrated.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from collections import Counter
from pathlib import Path

import httpx


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


def quality(truth: list[str], predicted: list[str], confidence: list[float]) -> dict[str, float]:
    """Accuracy, macro-F1 and ECE of predictions against the true labels."""
    correct = [p == t for p, t in zip(predicted, truth, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct),
        "macro_f1": macro_f1(truth, predicted),
        "ece": expected_calibration_error(correct, confidence),
    }


async def classify_all(
    url: str, texts: list[str], batch_size: int, concurrency: int, strategy: str | None
) -> list[dict]:
    limit = asyncio.Semaphore(concurrency)
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def one(batch: list[str]) -> list[dict]:
            async with limit:
                body: dict = {"texts": batch} | ({"strategy": strategy} if strategy else {})
                response = await http.post("/v1/classify", json=body)
                response.raise_for_status()
                return response.json()["results"]

        parts = await asyncio.gather(*(one(batch) for batch in batches))
    return [result for part in parts for result in part]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, help="labelled CSV file")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--strategy", choices=["knn", "zero_shot", "generative"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with args.csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row[args.text_column] for row in rows]
    truth = [row[args.label_column] for row in rows]
    started = time.perf_counter()
    results = asyncio.run(
        classify_all(args.url, texts, args.batch_size, args.concurrency, args.strategy)
    )
    elapsed = time.perf_counter() - started
    predicted = [result["label"] for result in results]
    confidence = [result["confidence"] for result in results]
    figures = {
        "file": str(args.csv),
        "texts": len(texts),
        **quality(truth, predicted, confidence),
        "seconds": round(elapsed, 2),
        "texts_per_second": round(len(texts) / elapsed, 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
