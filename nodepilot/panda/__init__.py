"""PanDA server clients (both dialects) and the local job server."""
