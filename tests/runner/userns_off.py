"""Run a command without privileges where no user namespace may be created, as on a node whose
kernel allows none to unprivileged users (root only; the machine's own setting is not touched):

    python userns_off.py COMMAND [ARG...]

The command runs in a user namespace of its own that maps the host's ids one to one, with
``user.max_user_namespaces`` set to 0 inside it (the limit is per user namespace), and with no
capability at all (setpriv empties its bounding set), like a pilot's unprivileged user."""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def main(argv: list[str]) -> int:
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(ready_r)
        if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) != 0:
            os._exit(125)
        os.write(ready_w, b"x")
        os.read(go_r, 1)  # the parent has written our id maps
        with open("/proc/sys/user/max_user_namespaces", "w") as fh:
            fh.write("0")
        # no capability left (none on exec either: an empty bounding set), as a pilot's user has none
        os.execvp("setpriv", ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *argv])
    os.close(go_r)
    os.close(ready_w)
    if os.read(ready_r, 1):
        for name, line in (("uid_map", "0 0 65536\n"), ("gid_map", "0 0 65536\n")):
            with open(f"/proc/{pid}/{name}", "w") as fh:
                fh.write(line)
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
