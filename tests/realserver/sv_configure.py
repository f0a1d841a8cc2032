"""Load the CRIC files into the server's database with its own configurator (server venv).

Run as ``python sv_configure.py``: the site, DDM endpoint and queue tables, then schedconfig_json.
"""

import sys

from pandaserver.daemons.scripts import configurator

configurator.main(argv=["configurator"])
configurator.main(argv=["configurator", "--json_dump"])
sys.exit(0)
