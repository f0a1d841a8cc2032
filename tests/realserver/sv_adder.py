"""One pass of the server's Adder daemon (server venv): what a production server does every few
minutes, once.

``add_main.main`` loops 50 times with sleeps in between. Two of its module-level names are
narrowed so that the loop runs once with no pause after it: ``range`` (the loop count) and
``time`` (its sleeps). Everything else is the daemon's own code: it lists the job output reports,
locks each and runs AdderGen on it. The daemon leaves helper processes and threads behind (they
linger about a minute): once ``main`` has returned they are ended and the process exits at once.
"""

import builtins
import multiprocessing
import os
import sys
import time
import types

from pandaserver.daemons.scripts import add_main

add_main.range = lambda count: builtins.range(min(count, 1))  # its loops: range(nLoop), range(nThr)
add_main.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, 0.25)))
status = 1
try:
    add_main.main(argv=["add_main", "0", "1"])
    status = 0
finally:
    for child in multiprocessing.active_children():
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
