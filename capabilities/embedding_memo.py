"""The vectors of the texts a process embedded last, by text.

Capabilities of one request run one after another in the same process when inline: a dependent
that embeds the text its parent just embedded (recommendations after kNN classification) gets the
vector from here instead of crossing to the engine again. Bounded, so it never grows with traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from cachetools import LRUCache

DEFAULT_MAX_ENTRIES = 4096

Embed = Callable[[list[str]], Awaitable[np.ndarray]]


class EmbeddingMemo:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._vectors: LRUCache[str, np.ndarray] = LRUCache(max_entries)

    async def embed(self, texts: Sequence[str], embed: Embed) -> np.ndarray:
        """One row per text: remembered rows, and `embed` once over the distinct others."""
        distinct = list(dict.fromkeys(texts))
        found = {text: self._vectors[text] for text in distinct if text in self._vectors}
        missing = [text for text in distinct if text not in found]
        if missing:
            found.update(zip(missing, await embed(missing), strict=True))
        # Every text asked for becomes the most recently used, the remembered ones included.
        self._vectors.update((text, found[text]) for text in distinct)
        return np.stack([found[text] for text in texts])
