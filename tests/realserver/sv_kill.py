"""Kill jobs with the server's own client (server venv): ``python sv_kill.py PANDAID...``.

Without a code the server kills a running job at the pilot's next heartbeat (command
``tobekilled``), as an operator's kill does.
"""

import sys

from pandaserver.userinterface import Client

status, output = Client.kill_jobs([int(x) for x in sys.argv[1:]])
if status != 0 or not isinstance(output, dict) or not output.get("success"):
    sys.exit(f"kill_jobs failed: status {status}, output {output!r}")
print(output.get("data"))
