"""The e2e fixtures (a site, ``nodepilot serve``) and the real storage servers, for the queue tests."""

from tests.e2e.conftest import job_server, payloads_see_the_examples, site  # noqa: F401 - fixtures
from tests.stager.servers import (  # noqa: F401 - fixtures registered by import
    webdav_server,
    webdav_session,
    xrootd_server,
    xrootd_session,
)
