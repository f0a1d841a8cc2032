"""Real storage servers for any stager test (see servers.py)."""

from tests.stager.servers import (  # noqa: F401 - fixtures registered by import
    s3_server,
    s3_session,
    webdav_server,
    webdav_session,
    xrootd_server,
    xrootd_session,
)
