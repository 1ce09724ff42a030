"""Progress events of a running campaign, and the emitter that logs and forwards them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CampaignEvent:
    """``kind``: stage | compress | candidate | job. ``data`` carries what changed."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[CampaignEvent], None]


class Emitter:
    """Logs each event and hands it to the progress callback; a callback that raises is logged,
    never allowed to stop the campaign."""

    def __init__(self, progress: ProgressFn | None = None) -> None:
        self._progress = progress

    def __call__(self, kind: str, message: str, **data: Any) -> None:
        logger.info("%s: %s", kind, message)
        if self._progress is not None:
            try:
                self._progress(CampaignEvent(kind, message, data))
            except Exception:
                logger.exception("campaign progress callback failed")
