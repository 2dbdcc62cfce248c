"""The config map as the data plane reads it (struct mc_config, laid out by the compiler): the
answered families, memcached's address and the allow-lists of both families, for IPv4-only,
IPv6-only and dual-stack configs. Addresses are in network byte order in memory, as the
kernel reads them from a packet."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from mcache_agent import constants
from mcache_agent.config import Config, load_config
from mcache_agent.dataplane.configmap import config_value, families
from mcache_agent.dataplane.layout import net_u32, net_u32x4
from mcache_agent.dataplane.loader import load

IPV4, IPV6 = constants.const("MC_FAMILY_IPV4"), constants.const("MC_FAMILY_IPV6")


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    """struct mc_config from the compiler, by the loader's own "layout" worker code."""
    return load("layout", Path("/nonexistent"), "", [])["config"]


def config(address: str, allowed: list[str]) -> Config:
    items = ", ".join(f"'{a}'" for a in allowed)
    return load_config("apiVersion: mcache/v1\nversion: 3\n"
                       f"memcached: {{address: '{address}', port: 11211}}\n"
                       "interfaces: [{name: lo}]\n"
                       f"cache: {{allowed_clients: [{items}]}}\n")


class Decoded:
    """The fields of one packed struct mc_config that say who is answered."""

    def __init__(self, raw: bytes, layout: dict[str, Any]) -> None:
        self.raw, self.f = raw, layout["fields"]
        self.families = self.u32("families")
        self.server_addr = self.at("server_addr", 4)
        self.server_addr6 = self.at("server_addr6", 16)
        self.port = self.at("port", 2)
        self.allowed = self.cidrs("n_allowed", "allowed", 4)
        self.allowed6 = self.cidrs("n_allowed6", "allowed6", 16)

    def u32(self, name: str) -> int:
        return int(struct.unpack_from("<I", self.raw, self.f[name]["offset"])[0])

    def at(self, name: str, size: int, extra: int = 0) -> bytes:
        off = self.f[name]["offset"] + extra
        return self.raw[off : off + size]

    def cidrs(self, count: str, name: str, size: int) -> list[str]:
        """CIDR texts from the (addr, mask) pairs in network byte order."""
        out = []
        step = self.f[name]["elem"]["size"]
        for i in range(self.u32(count)):
            pair = self.at(name, 2 * size, i * step)
            addr, mask = pair[:size], pair[size:]
            ip = ipaddress.ip_address(addr)
            plen = bin(int.from_bytes(mask, "big")).count("1")
            out.append(str(ipaddress.ip_network(f"{ip}/{plen}")))
        return out


def test_net_u32x4_is_the_address_as_it_is_on_the_wire() -> None:
    words = net_u32x4("fd00:1:2:3::beef")
    assert b"".join(w.to_bytes(4, "little") for w in words) == \
        ipaddress.IPv6Address("fd00:1:2:3::beef").packed
    # the same convention as IPv4's
    assert net_u32x4("::ffff:10.1.2.3")[3] == net_u32("10.1.2.3")


def test_ipv4_only(layout: dict[str, Any]) -> None:
    cfg = config("127.0.0.1", ["10.0.0.0/8", "fd00::/8", "192.0.2.0/24"])
    d = Decoded(config_value(cfg, layout, stats_slot=0), layout)
    assert d.families == IPV4 == families(cfg)
    # the IPv4 fields as they were before IPv6: own address first, loopback, the networks
    assert d.server_addr == socket.inet_aton("127.0.0.1")
    assert d.port == (11211).to_bytes(2, "big")
    assert d.allowed == ["127.0.0.1/32", "127.0.0.0/8", "10.0.0.0/8", "192.0.2.0/24"]
    assert d.at("allowed", 8) == socket.inet_aton("127.0.0.1") + b"\xff" * 4
    assert d.at("allowed", 8, 8) == socket.inet_aton("127.0.0.0") + b"\xff\0\0\0"
    # the IPv6 networks are there (not answered while families says IPv4 only)
    assert d.server_addr6 == bytes(16)
    assert d.allowed6 == ["::1/128", "fd00::/8"]


def test_wildcard_ipv4(layout: dict[str, Any]) -> None:
    d = Decoded(config_value(config("0.0.0.0", ["10.0.0.0/8"]), layout, stats_slot=0), layout)
    assert (d.families, d.server_addr, d.server_addr6) == (IPV4, bytes(4), bytes(16))
    assert d.allowed == ["127.0.0.0/8", "10.0.0.0/8"]
    assert d.allowed6 == ["::1/128"]


def test_ipv6_only(layout: dict[str, Any]) -> None:
    cfg = config("FD00:19:0::1", ["fd00:19::/64", "10.0.0.0/8", "2001:db8::/32"])
    d = Decoded(config_value(cfg, layout, stats_slot=0), layout)
    assert d.families == IPV6 == families(cfg)
    assert d.server_addr6 == ipaddress.IPv6Address("fd00:19::1").packed
    assert d.server_addr == bytes(4)
    assert d.allowed6 == ["fd00:19::1/128", "::1/128", "fd00:19::/64", "2001:db8::/32"]
    assert d.at("allowed6", 32, 64) == (ipaddress.IPv6Address("fd00:19::").packed +
                                        b"\xff" * 8 + bytes(8))
    assert d.allowed == ["127.0.0.0/8", "10.0.0.0/8"]  # no own IPv4 address


def test_dual_stack(layout: dict[str, Any]) -> None:
    cfg = config("::", ["198.18.0.0/15", "fd00:18::/48"])
    d = Decoded(config_value(cfg, layout, stats_slot=0), layout)
    assert d.families == IPV4 | IPV6 == families(cfg)
    assert (d.server_addr, d.server_addr6) == (bytes(4), bytes(16))  # any local address
    assert d.allowed == ["127.0.0.0/8", "198.18.0.0/15"]
    assert d.allowed6 == ["::1/128", "fd00:18::/48"]


def test_the_value_fills_the_struct(layout: dict[str, Any]) -> None:
    raw = config_value(config("::", ["fd00::/8"]), layout, stats_slot=2)
    assert len(raw) == layout["size"]
    assert len(layout["fields"]["allowed6"]["elem"]["fields"]) == 2
    assert layout["fields"]["allowed6"]["length"] == constants.const("MC_MAX_ALLOWED")
