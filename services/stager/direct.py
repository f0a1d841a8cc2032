"""Direct access: an input the payload reads in place (its turl) instead of a local copy.

Used when the job asks for it (request ``direct_access``), the queue allows it for the activity
(``direct_access_lan`` / ``direct_access_wan``), the file is not marked for copying
(``dispatch_token`` "local"), and the mover of the replica's scheme declares
``supports_direct_access``. The replica is checked first: it exists, and its size and adler32 match
the job's as far as the mover can query them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from nodepilot.job import FileSpec
from services.stager.attempts import Moved
from services.stager.movers.base import Mover, Reason, TransferError, mover_classes


def direct_capable(url: str) -> bool:
    cls = mover_classes().get(urlsplit(url).scheme.lower())
    return bool(getattr(cls, "supports_direct_access", False)) and hasattr(cls, "stat")


async def check_in_place(mover: Mover, url: str, spec: FileSpec) -> Moved:
    """The replica as the payload will open it; TransferError if it is missing or not the job's file."""
    stat = await mover.stat(url)  # type: ignore[attr-defined]
    size, adler32 = stat.size, stat.adler32
    if spec.fsize is not None and size is not None and size != spec.fsize:
        raise TransferError(Reason.SIZE, f"size mismatch for {url}: expected {spec.fsize}, the SE has {size}")
    expected = spec.checksum
    if expected is not None and expected.algorithm == "adler32" and adler32 and adler32 != expected.value:
        raise TransferError(Reason.ADLER32, f"adler32 mismatch for {url}: expected {expected.value}, "
                                            f"the SE has {adler32}")
    return Moved(size if size is not None else spec.fsize, adler32 or "", status="direct")

