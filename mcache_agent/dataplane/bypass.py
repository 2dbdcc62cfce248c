"""The local bypass's attachment: the sockops root on a cgroup v2 directory, whose processes'
connections to memcached may then join the bypass (bpf/sock_bypass.c). The sk_msg root is
attached to the pinned sockhash once, when the roots are loaded; what the connections do is
the config map's (`bypass`): turning the option off makes every connection leave, and
detaching the sockops root stops new ones from joining. Nothing here removes a socket from
the sockhash: a socket leaves it when it closes (a reply still queued in a socket taken out
would be lost)."""

from __future__ import annotations

import errno
import os
import socket

from mcache_agent import constants
from mcache_agent.dataplane import libbpf
from mcache_agent.dataplane.pins import PinDir

SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>; Python's socket module does not name it


def netns_cookie() -> int:
    """This process's network namespace, as bpf_get_netns_cookie() names it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def attach(pins: PinDir, cgroup: str) -> None:
    """The sockops root on the cgroup, unless it is there already (a restarted agent)."""
    cg = libbpf.Fd(os.open(cgroup, os.O_RDONLY))
    with cg, pins.open("sock_root") as prog:
        if libbpf.prog_info(prog).id in libbpf.cgroup_prog_ids(cg, libbpf.BPF_CGROUP_SOCK_OPS):
            return
        libbpf.cgroup_attach(prog, cg, libbpf.BPF_CGROUP_SOCK_OPS)


def detach(pins: PinDir, cgroup: str) -> None:
    """The sockops root off the cgroup; a cgroup that is gone, or a root not there, is fine."""
    try:
        cg = libbpf.Fd(os.open(cgroup, os.O_RDONLY))
    except FileNotFoundError:
        return
    with cg, pins.open("sock_root") as prog:
        try:
            libbpf.cgroup_detach(prog, cg, libbpf.BPF_CGROUP_SOCK_OPS)
        except libbpf.BpfError as exc:
            if exc.errno != errno.ENOENT:
                raise


def sockets(pins: PinDir) -> int:
    """Sockets in the bypass now (two per connection)."""
    if not pins.has("sockhash"):
        return 0
    with pins.open("sockhash") as fd:
        return libbpf.map_keys(fd, constants.const("MC_SOCK_KEY_BYTES"),
                               constants.const("MC_BYPASS_SOCKETS"))
