"""One pass of the server's Adder daemon (server venv): what a production server does every few
minutes, once.

``add_main.main`` loops 50 times with sleeps in between. Two of its module-level names are
narrowed so that the loop runs once with no pause after it: ``range`` (the loop count) and
``time`` (its sleeps). Everything else is the daemon's own code: it lists the job output reports,
locks each and runs AdderGen on it. The daemon leaves non-daemon threads behind (about a minute
at exit): the process ends with ``os._exit`` once ``main`` has returned.
"""

import builtins
import logging
import os
import sys
import time
import types

from pandaserver.daemons.scripts import add_main

add_main.range = lambda count: builtins.range(min(count, 1))  # its loops: range(nLoop), range(nThr)
add_main.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, 0.25)))
try:
    add_main.main(argv=["add_main", "0", "1"])
finally:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
