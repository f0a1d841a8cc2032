"""The PanDA server's WSGI application as Apache would present it (runs in the server's venv).

The server's dispatcher reads the method path from SCRIPT_NAME (Apache's WSGIScriptAlias puts it
there), and it trusts the client's identity from mod_ssl / mod_gridsite variables. gunicorn sets
neither: this wrapper copies PATH_INFO to SCRIPT_NAME and injects a test DN with the production
role. With TLS (``REALSERVER_TLS=1``) the DN is injected only when gunicorn saw a client
certificate, as mod_ssl would set it only then.
"""

import os

from pandaserver.server.panda import application as panda_application

DN = os.environ.get("REALSERVER_DN", "/DC=org/DC=example/CN=nodepilot test pilot")
FQAN = os.environ.get("REALSERVER_FQAN", "VOMS /wlcg/Role=production")
TLS = os.environ.get("REALSERVER_TLS") == "1"


def _client_certified(environ) -> bool:
    if not TLS:
        return True  # plain HTTP: every client is the test pilot
    sock = environ.get("gunicorn.socket")
    return bool(sock is not None and sock.getpeercert())


def application(environ, start_response):
    environ["SCRIPT_NAME"] = environ.get("PATH_INFO", "")
    if _client_certified(environ):
        environ["SSL_CLIENT_S_DN"] = DN
        environ["GRST_CRED_0"] = FQAN
    return panda_application(environ, start_response)
