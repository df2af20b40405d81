"""The vectors of the texts a process embedded last, by text.

Capabilities of one request run one after another in the same process when inline: a dependent
that embeds the text its parent just embedded (recommendations after kNN classification) gets the
vector from here instead of crossing to the engine again. Bounded, so it never grows with traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

DEFAULT_MAX_ENTRIES = 4096

Embed = Callable[[list[str]], Awaitable[np.ndarray]]


class EmbeddingMemo:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    async def embed(self, texts: Sequence[str], embed: Embed) -> np.ndarray:
        """One row per text: remembered rows, and `embed` once over the distinct others."""
        distinct = list(dict.fromkeys(texts))
        found = {text: self._vectors[text] for text in distinct if text in self._vectors}
        missing = [text for text in distinct if text not in found]
        if missing:
            found.update(zip(missing, await embed(missing), strict=True))
        for text in distinct:
            self._remember(text, found[text])
        return np.stack([found[text] for text in texts])

    def _remember(self, text: str, vector: np.ndarray) -> None:
        self._vectors[text] = vector
        self._vectors.move_to_end(text)
        while len(self._vectors) > self._max_entries:
            self._vectors.popitem(last=False)
