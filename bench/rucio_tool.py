"""Run by the test Rucio venv's own Python (never imported by the tests): the Rucio server's schema and
root account, the test RSEs, and Rucio's own client for seeding and checking replicas.

``python rucio_tool.py <command>`` reads a JSON object on stdin and prints a JSON answer. Commands:
``bootstrap`` (database, root account), ``setup`` (RSEs, protocols, limits, scope), ``register``
(replicas of files already written to an RSE's storage), ``list`` (``list_replicas`` of DIDs).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def bootstrap(_: dict[str, Any]) -> Any:
    from rucio.db.sqla.util import build_database, create_base_vo, create_root_account

    build_database()
    create_base_vo()
    create_root_account()
    return "ok"


def setup(args: dict[str, Any]) -> Any:
    from rucio.client import Client

    client = Client()
    everything = {"read": 1, "write": 1, "delete": 1}
    for rse in args["rses"]:
        client.add_rse(rse["name"], deterministic=True)
        client.add_protocol(rse["name"], {
            "scheme": rse["scheme"], "hostname": rse["hostname"], "port": rse["port"], "prefix": rse["prefix"],
            "impl": rse["impl"], "domains": {"lan": everything, "wan": {**everything, "third_party_copy_read": 1,
                                                                       "third_party_copy_write": 1}}})
        client.set_local_account_limit("root", rse["name"], -1)
    client.add_scope("root", args["scope"])
    return "ok"


def register(args: dict[str, Any]) -> Any:
    from rucio.client import Client

    client = Client()
    for rse, files in args["replicas"].items():
        client.add_replicas(rse, files)
    return "ok"


def list_replicas(args: dict[str, Any]) -> Any:
    from rucio.client import Client

    return list(Client().list_replicas(args["dids"], schemes=args.get("schemes")))


COMMANDS = {"bootstrap": bootstrap, "setup": setup, "register": register, "list": list_replicas}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](json.load(sys.stdin)), default=str))
