"""Job definitions as the server's submission client takes them, and the JEDI rows of an
event-service task.

JEDI (the task layer) does not run here: an event-service job's task, datasets and input file
are inserted with SQL, as JEDI would have written them, and the job names its input by those ids
and carries ``specialHandling=es:...``; the server then creates the job's event ranges itself.
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

from tests.realserver.cric import QUEUE, VO

SCOPE = "nodepilot"
INPUT_SCOPE = "demo.data"  # the example SE's inputs (examples/se) live under this scope
INPUTS = {  # lfn: (guid, size, adler32) of examples/se/demo/data/...
    "demo.input.1.txt": ("5f0e7a10-0000-4000-8000-000000000001", 17000, "53332ef2"),
}
ES_TASK_ID = 4242
ES_INPUT = "EVNT.4242._000001.pool.root"
ES_INPUT_GUID = "5f0e7a10-0000-4000-8000-000000004242"
ES_DATASETS = {"input": 1, "output": 2, "log": 3}
ES_INPUT_BYTES = b"nodepilot event-service input\n" * 40  # the pilot stages it in: it must be on the SE
ES_INPUT_ADLER32 = f"{zlib.adler32(ES_INPUT_BYTES):08x}"


def _file(lfn: str, kind: str, scope: str = SCOPE, **extra: Any) -> dict[str, Any]:
    dataset = f"{scope}.{kind}.ds"
    return {"lfn": lfn, "type": kind, "scope": scope, "dataset": dataset, "destinationDBlock": dataset,
            "destinationSE": QUEUE, "destinationDBlockToken": "ATLASDATADISK", **extra}


def job(name: str, transformation: str, parameters: str, outputs: tuple[str, ...] = (),
        inputs: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A managed job for the suite's queue: its inputs (from the example SE), outputs and log."""
    files = [_file(lfn, "input", INPUT_SCOPE, GUID=INPUTS[lfn][0], fsize=INPUTS[lfn][1],
                   checksum=f"ad:{INPUTS[lfn][2]}", status="ready", prodDBlock=f"{INPUT_SCOPE}.ds")
             for lfn in inputs]
    files += [_file(lfn, "output") for lfn in outputs]
    files.append(_file(f"{name}.log.tgz", "log", GUID=str(uuid.uuid4())))
    spec = {"jobName": name, "jobDefinitionID": 1, "prodSourceLabel": "managed", "computingSite": QUEUE,
            "VO": VO, "cloud": "WORLD", "transformation": transformation, "jobParameters": parameters,
            "currentPriority": 1000, "coreCount": 1, "maxCpuCount": 600, "maxWalltime": 600,
            "maxDiskCount": 1000, "minRamCount": 500, "attemptNr": 1, "maxAttempt": 3, "destinationSE": QUEUE,
            "destinationDBlock": f"{SCOPE}.output.ds", **extra}
    return {"job": spec, "files": files}


def es_task_sql(n_events: int) -> str:
    """JEDI's rows for one event-service task: the task, its input/output/log datasets, its one input file."""
    t, ds = ES_TASK_ID, ES_DATASETS
    datasets = ",".join(
        f"({t}, {i}, 'nodepilot.es.{kind}', '{kind}', 'ready', now(), now())" for kind, i in ds.items())
    return (
        "INSERT INTO doma_panda.jedi_tasks (jeditaskid, taskname, status, username, creationdate, modificationtime,"
        " vo, prodsourcelabel, eventservice, tasktype, workqueue_id, corecount, gshare, splitrule)"
        f" VALUES ({t}, 'nodepilot.es', 'running', 'nodepilot', now(), now(), '{VO}', 'managed', 1, 'prod', 2, 1,"
        " 'Express', 'ES=1');\n"
        "INSERT INTO doma_panda.jedi_datasets (jeditaskid, datasetid, datasetname, type, status, creationtime,"
        f" modificationtime) VALUES {datasets};\n"
        "INSERT INTO doma_panda.jedi_dataset_contents (jeditaskid, datasetid, fileid, creationdate, lfn, guid, type,"
        " status, fsize, scope, attemptnr, maxattempt, nevents, keeptrack, startevent, endevent)"
        f" VALUES ({t}, {ds['input']}, 1, now(), '{ES_INPUT}', '{ES_INPUT_GUID}', 'input', 'picked',"
        f" {len(ES_INPUT_BYTES)}, '{SCOPE}', 0, 5, {n_events}, 1, 0, {n_events - 1});\n"
    )


def es_job(name: str, parameters: str, n_events: int, per_range: int) -> dict[str, Any]:
    """An event-service job of the task of ``es_task_sql``: the server splits its input into ranges."""
    spec = job(name, "bash", parameters, outputs=(f"HITS.{name}.pool.root",),
               jediTaskID=ES_TASK_ID, specialHandling=f"es:1:{ES_INPUT}/0/{n_events - 1}/{per_range}",
               eventService=1, lockedby="jedi")
    spec["files"].insert(0, _file(ES_INPUT, "input", GUID=ES_INPUT_GUID, fsize=len(ES_INPUT_BYTES),
                                  checksum=f"ad:{ES_INPUT_ADLER32}", status="ready",
                                  jediTaskID=ES_TASK_ID, datasetID=ES_DATASETS["input"], fileID=1, attemptNr=0,
                                  prodDBlock="nodepilot.es.input"))
    for item in spec["files"][1:]:
        item.update(jediTaskID=ES_TASK_ID, datasetID=ES_DATASETS[item["type"]])
    return spec
