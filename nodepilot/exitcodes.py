"""Exit codes of ``nodepilot start`` / ``run`` (documented in README.md)."""

OK = 0  # every job ran to a final state, or the server had no job
INTERNAL = 1  # the pilot itself failed (a bug): see the log
USAGE = 2  # bad options or configuration
SERVER = 3  # could not talk to the server (no job could be acquired)
SERVICES = 4  # a service could not be started or kept alive
UPDATE_LOST = 5  # a final update could not be delivered (1318)
REFUSED = 6  # the server refused the pilot as configured (credentials, certificates, API dialect): no job ran
QUEUE_CLOSED = 7  # the queue is not ACTIVE or is offline: no job was asked for
JOB_FAILED = 8  # nodepilot run: its one job failed (the pilot worked; the summary says why)
SIGNALLED = 128  # 128 + N: stopped gracefully after signal N
