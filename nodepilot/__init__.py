"""nodepilot: a worker-node pilot for PanDA-style distributed computing."""

__version__ = "0.1.0"
