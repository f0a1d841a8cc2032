"""Queue definitions: where they come from (CRIC, PanDA's schedconfig cache, a local file), how CRIC's
PanDA-queue and DDM-endpoint JSON become our ``QueueData``, our own settings overlay, and the preflight
check run before any job is asked for (docs/queues.md)."""
