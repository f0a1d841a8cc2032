"""Submit jobs with the server's own client (server venv).

stdin: a JSON list of ``{"job": {JobSpec attribute: value}, "files": [{FileSpec attribute: value}]}``;
stdout: the JSON list of the PandaIDs the server gave them, in that order.
"""

import json
import sys

from pandaserver.taskbuffer.FileSpec import FileSpec
from pandaserver.taskbuffer.JobSpec import JobSpec
from pandaserver.userinterface import Client


def build(spec: dict) -> JobSpec:
    job = JobSpec()
    for key, value in spec["job"].items():
        setattr(job, key, value)
    for file_spec in spec.get("files", []):
        item = FileSpec()
        for key, value in file_spec.items():
            setattr(item, key, value)
        job.addFile(item)
    return job


jobs = [build(spec) for spec in json.load(sys.stdin)]
status, output = Client.submit_jobs(jobs)
if status != 0 or not isinstance(output, dict) or not output.get("success"):
    sys.exit(f"submit_jobs failed: status {status}, output {output!r}")
print(json.dumps([int(row[0]) for row in output["data"]]))
