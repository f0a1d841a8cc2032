"""``nodepilot serve``: the job server's one command line (the ``nodepilot`` command registers it).
Cheap to import: the server itself is imported when the command runs."""

from pathlib import Path
from typing import Annotated

import typer

from nodepilot import exitcodes


def serve(
    jobs: Annotated[Path, typer.Option("--jobs", help="directory of job definitions (*.json)")] = Path("jobs"),
    host: Annotated[str, typer.Option("--host", help="loopback by default")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="0: pick a free port")] = 0,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file of received updates")] = None,
    port_file: Annotated[Path | None, typer.Option("--port-file", help="write the port here")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="HTTPS; clients need a certificate or a token")] = False,
    cert: Annotated[Path | None, typer.Option("--cert", help="server certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="server key (PEM)")] = None,
    ca: Annotated[Path | None, typer.Option("--ca", help="CA of accepted client certificates")] = None,
    tokens: Annotated[Path | None, typer.Option("--tokens", help="file of accepted bearer tokens")] = None,
    require_cert: Annotated[bool, typer.Option("--require-cert",
                                               help="--tls: demand a client certificate in the handshake")] = False,
    no_legacy: Annotated[bool, typer.Option("--no-legacy", help="no legacy API: /server/panda/* answers 403")] = False,
    event_update_500: Annotated[bool, typer.Option(
        "--event-update-500", help="answer update_event_ranges with HTTP 500 after applying it (panda-server 1.0.4)")
    ] = False,
) -> None:
    """A local job server speaking the PanDA pilot protocol (both dialects), for tests, demos and small sites."""
    from nodepilot.jobserver.app import ListenError, run_server

    try:
        run_server(jobs, host=host, port=port, db_path=db, port_file=port_file, tls=tls, cert=cert, key=key, ca=ca,
                   tokens=tokens, require_cert=require_cert, legacy_api=not no_legacy,
                   event_update_500=event_update_500)
    except ValueError as exc:
        typer.echo(f"nodepilot serve: {exc}", err=True)
        raise typer.Exit(exitcodes.USAGE) from None
    except ListenError as exc:  # the server cannot be started here as asked
        typer.echo(f"nodepilot serve: {exc}", err=True)
        raise typer.Exit(exitcodes.SERVICES) from None
