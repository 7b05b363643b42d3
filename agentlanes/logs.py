"""structlog events for runs: JSON lines on stderr by default, never content.

Events carry ids, stages, lanes, costs and digests only. If the application has
configured structlog, agentlanes logs through that configuration; otherwise through its
own JSON-to-stderr logger, at the level in ``AGENTLANES_LOG_LEVEL`` (``debug``,
``info`` (default), ``warning``, ``error``, or ``off``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import structlog

__all__ = ["get_logger"]

# "off" uses the highest level structlog filters at; agentlanes never logs at critical.
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "off": 50}


def get_logger(**bound: Any) -> Any:
    """A logger bound with ``bound`` (run id, stage, lane...)."""
    if structlog.is_configured():
        return structlog.get_logger("agentlanes").bind(**bound)
    level = _LEVELS.get(os.environ.get("AGENTLANES_LOG_LEVEL", "info").lower(), 20)
    logger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_name="agentlanes",
    )
    return logger.bind(**bound)
