"""Server-sent events: device status, telemetry, campaign progress, deployment progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from host.api.deps import Ctx, Reader
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError
from host.api.live import EVENT_TYPES

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0


@router.get(
    "/events", dependencies=[Reader], response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "`event: device|telemetry|campaign|deployment`, "
                                    "`data:` one JSON object, `id:` for Last-Event-ID"},
               **ERRORS, **AUTH_ERRORS},
)  # fmt: skip
async def events(
    ctx: Ctx,
    types: Annotated[
        str | None, Query(description="comma-separated subset of: " + ", ".join(EVENT_TYPES))
    ] = None,
    max_events: Annotated[
        int | None, Query(ge=1, le=100_000, description="close the stream after this many")
    ] = None,
    last_event_id: Annotated[int | None, Header(description="resume after this event id")] = None,
) -> StreamingResponse:
    """A stream of changes as they are stored (the browser's EventSource reads it as is)."""
    wanted = set(EVENT_TYPES)
    if types:
        wanted = {t.strip() for t in types.split(",") if t.strip()}
        unknown = wanted - set(EVENT_TYPES)
        if unknown:
            raise ApiError(
                422, "invalid_request",
                f"types: unknown event type(s) {sorted(unknown)}; use {', '.join(EVENT_TYPES)}",
            )  # fmt: skip
    queue = ctx.bus.subscribe(asyncio.get_running_loop(), after=last_event_id)

    async def stream() -> AsyncIterator[str]:
        sent = 0
        try:
            yield ": edgetailor events\n\n"
            while max_events is None or sent < max_events:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event.type in wanted:
                    sent += 1
                    yield event.sse()
        finally:
            ctx.bus.unsubscribe(queue)

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )  # fmt: skip
