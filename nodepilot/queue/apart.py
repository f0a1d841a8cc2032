"""Reading the queue data in a short-lived child process.

The queue's settings are checked by pydantic models (schema.py) that nothing needs once they are read.
Read in the pilot's own process, pydantic, the models' validators and the heap the reading leaves
fragmented would stay there for the pilot's life, and be inherited by every service forked from it
(about 5 MB of anonymous memory, and 4 MB of pydantic-core's library). A forked child reads, checks and
merges them instead and hands back the result as JSON; what goes wrong comes back as the same one-line
error (OSError, ValueError) that reading in place would raise.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from nodepilot.queue.model import QueueData

if TYPE_CHECKING:
    from nodepilot.config import PilotConfig

ERRORS: dict[str, type[Exception]] = {"os": OSError, "value": ValueError}


def _read(config: PilotConfig) -> dict[str, Any]:
    from nodepilot.queue.loader import load
    from nodepilot.queue.sources import SourceFailed

    try:
        return {"queue": asdict(load(config))}
    except (OSError, SourceFailed) as exc:
        return {"error": "os", "message": str(exc)}
    except ValueError as exc:
        return {"error": "value", "message": str(exc)}
    except Exception as exc:  # a bug: said by the parent, with its repr
        return {"error": "internal", "message": repr(exc)}


class QueueReader:
    """A forked child reading the queue data from the moment it is made (the caller goes on meanwhile)."""

    def __init__(self, config: PilotConfig) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written twice
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(read_end)
                with os.fdopen(write_end, "w") as out:
                    json.dump(_read(config), out)
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
            finally:
                os._exit(0)
        os.close(write_end)
        self.pid, self.answer = pid, os.fdopen(read_end)

    def result(self) -> QueueData:
        """The queue data, or the reading's one-line error (OSError, ValueError)."""
        with self.answer:
            raw = self.answer.read()
        _, status = os.waitpid(self.pid, 0)
        if not raw:
            raise OSError(f"the queue data reader ended without an answer (wait status {status})")
        reply = json.loads(raw)
        if "queue" in reply:
            return QueueData.from_dict(reply["queue"])
        error = ERRORS.get(reply["error"])
        if error is None:
            raise RuntimeError(f"reading the queue data failed: {reply['message']}")
        raise error(reply["message"])

