"""Attaching the stable roots to interfaces: XDP over netlink (libbpf), and TC ingress and
egress filters on a clsact qdisc (pyroute2). All belong to the interface, not to a process:
they stay when the agent exits."""

from __future__ import annotations

import errno
import logging
import socket

from mcache_agent.dataplane import libbpf
from mcache_agent.dataplane.pins import Attachment

log = logging.getLogger(__name__)

TC_EGRESS_PARENT = "ffff:fff3"
TC_INGRESS_PARENT = "ffff:fff2"
TC_PRIO = 0xC0DE & 0x7FFF
ETH_P_ALL = 0x0003


class AttachError(Exception):
    pass


def link_kind(name: str) -> str:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ipr.link_lookup(ifname=name))
        if not links:
            raise AttachError(f"interface {name} not found")
        info = links[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def xdp_attached(name: str) -> bool:
    try:
        return libbpf.xdp_prog_id(socket.if_nametoindex(name)) != 0
    except OSError:
        return False


def attach_xdp(name: str, requested: str, prog_fd: int) -> str:
    """Attach in the requested mode; auto takes native where it works. Returns the mode."""
    ifindex = socket.if_nametoindex(name)
    mode = requested
    if requested == "auto":
        # Native XDP_TX on a veth drops every reply unless the peer runs XDP too, and lo
        # has no native mode: both get generic.
        mode = "generic" if name == "lo" or link_kind(name) == "veth" else "native"
    if mode == "native":
        try:
            libbpf.xdp_attach(ifindex, prog_fd, libbpf.XDP_FLAGS_DRV_MODE)
            return "native"
        except OSError as exc:
            if requested == "native":
                raise AttachError(f"{name}: native XDP refused: {exc.strerror}") from None
    try:
        libbpf.xdp_attach(ifindex, prog_fd, libbpf.XDP_FLAGS_SKB_MODE)
    except OSError as exc:
        raise AttachError(f"{name}: generic XDP refused: {exc.strerror}") from None
    return "generic"


def attach_tc(name: str, prog_fd: int, ingress_fd: int | None) -> bool:
    """The egress filter (and the ingress one, when given), on a clsact qdisc; True when this
    call created the qdisc."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        created = True
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            created = False
        ipr.tc("replace-filter", "bpf", idx, fd=prog_fd, name="mcache_tc_root",
               parent=TC_EGRESS_PARENT, prio=TC_PRIO, protocol=ETH_P_ALL, direct_action=True)
        if ingress_fd is not None:
            ipr.tc("replace-filter", "bpf", idx, fd=ingress_fd, name="mcache_tc_in_root",
                   parent=TC_INGRESS_PARENT, prio=TC_PRIO, protocol=ETH_P_ALL,
                   direct_action=True)
        return created


def attach(name: str, requested: str, role: str, xdp_fd: int, tc_fd: int,
           tc_in_fd: int | None) -> Attachment:
    mode = attach_xdp(name, requested, xdp_fd)
    created = attach_tc(name, tc_fd, tc_in_fd)
    return Attachment(interface=name, requested=requested, mode=mode, role=role,
                      clsact_created=created, tc_ingress=tc_in_fd is not None)


def detach(entry: Attachment) -> None:
    """Remove what attach() put on the interface; an interface that is gone is fine."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    name = entry.interface
    flags = libbpf.XDP_FLAGS_DRV_MODE if entry.mode == "native" else libbpf.XDP_FLAGS_SKB_MODE
    try:
        libbpf.xdp_detach(socket.if_nametoindex(name), flags)
    except OSError as exc:
        log.warning("remove xdp from %s: %s", name, exc.strerror)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        try:
            if entry.clsact_created:
                ipr.tc("del", "clsact", idx)
            else:
                for parent in (TC_INGRESS_PARENT, TC_EGRESS_PARENT):
                    try:
                        ipr.tc("del-filter", "bpf", idx, parent=parent, prio=TC_PRIO,
                               protocol=ETH_P_ALL)
                    except NetlinkError as exc:  # an ingress filter an older agent never made
                        if exc.code not in (errno.ENOENT, errno.EINVAL):
                            raise
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise
