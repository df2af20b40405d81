"""W3C Trace Context (`traceparent`): what the client sends and the service passes on.

`00-<trace-id>-<parent-id>-<flags>`: a trace id shared by every span of one trace, the id of the
span that made the call, and flags (01: sampled). A service that receives one keeps the trace id
and calls on with a span of its own (`child`); one it cannot parse is ignored, as the
recommendation says, never an error.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

HEADER = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"

    @classmethod
    def new(cls) -> TraceParent:
        """The root span of a new trace."""
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @classmethod
    def parse(cls, header: str | None) -> TraceParent | None:
        """The trace context of a `traceparent` header; None when absent or malformed."""
        match = _FORMAT.match((header or "").strip().lower())
        if match is None:
            return None
        trace_id, span_id, flags = match.groups()
        if trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
            return None
        return cls(trace_id, span_id, flags)

    def child(self) -> TraceParent:
        """A span of this trace called from this one: same trace id and flags, a new span id."""
        return TraceParent(self.trace_id, secrets.token_hex(8), self.flags)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"
