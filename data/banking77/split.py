"""Splits train.csv into examples.csv (loaded by the knn strategy) and heldout.csv (accuracy only).

The split is deterministic (a hash of each text), stratified by intent, and disjoint: every row of
train.csv lands in exactly one of the two files, so the held-out texts are never loaded as examples.
Run from the project root: `python data/banking77/split.py`.
"""

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT_EVERY = 10


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def main() -> None:
    with (HERE / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row["category"]].append(row)
    examples, heldout = [], []
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda row: _digest(row["text"]))
        for index, row in enumerate(ordered):
            (heldout if index % HELDOUT_EVERY == 0 else examples).append(row)
    for name, part in (("examples.csv", examples), ("heldout.csv", heldout)):
        with (HERE / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(part)
    print(f"examples: {len(examples)} rows, heldout: {len(heldout)} rows")


if __name__ == "__main__":
    main()
