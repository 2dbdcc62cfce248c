#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Check that the host's memcached answers as mcache needs it: TCP and UDP, on the port."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: memcached_check
short_description: Check that memcached answers as mcache needs it (UDP on, on the config's port)
description:
  - mcache answers GETs over UDP in the kernel and fills its cache from memcached's UDP replies;
    its health probe SETs over TCP. So memcached must listen on O(address) with TCP on O(port)
    and UDP on, on the same port (C(-U PORT); memcached turns UDP off by default since 1.5.6).
  - Asks memcached over TCP for its C(stats settings) (C(tcpport), C(udpport), C(inter)) and
    sends it a UDP C(version) request; fails with what is wrong and how to fix it - memcached
    not answering over TCP, UDP off, UDP on another port, no answer over UDP.
  - Used by the C(mcache.fleet.mcache_host) role in every memcached mode, and the whole check in
    its C(external) mode (bring your own memcached). Read only; never reports C(changed).
version_added: "0.2.0"
author: mcache contributors (@mcache)
options:
  address:
    description: The address memcached listens on (the config's memcached.address); a wildcard
      (C(0.0.0.0), C(::)) is checked over loopback.
    type: str
    required: true
  port:
    description: The port (the config's memcached.port), TCP and UDP.
    type: int
    default: 11211
  wait:
    description: Seconds to wait for memcached to answer over TCP (one just started).
    type: float
    default: 10
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.reads
"""

EXAMPLES = r"""
- name: The memcached the host already runs (bring your own)
  mcache.fleet.memcached_check:
    address: 198.18.0.11
    port: 11211
"""

RETURN = r"""
version:
  description: memcached's version (its UDP answer).
  returned: success
  type: str
tcp_port:
  description: memcached's TCP port (stats settings tcpport).
  returned: when memcached answered over TCP
  type: int
udp_port:
  description: memcached's UDP port (stats settings udpport; 0 is off).
  returned: when memcached answered over TCP
  type: int
listen:
  description: The addresses memcached listens on (stats settings inter).
  returned: when memcached answered over TCP
  type: str
"""

import socket
import struct
import time

from ansible.module_utils.basic import AnsibleModule


def target(address):
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "127.0.0.1"  # a dual-stack memcached (-l 0.0.0.0,::), as the agent's probe does
    return address


def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def stats_settings(address, port, timeout):
    s = socket.socket(family(address), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((address, port))
        s.sendall(b"stats settings\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed before END")
            data += chunk
    finally:
        s.close()
    out = {}
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def udp_version(address, port, timeout):
    """memcached's UDP frame header (request id, sequence 0, 1 datagram) + `version`."""
    s = socket.socket(family(address), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(struct.pack("!HHHH", 0x6d63, 0, 1, 0) + b"version\r\n", (address, port))
        reply = s.recv(2048)
    finally:
        s.close()
    if len(reply) < 8 or struct.unpack("!H", reply[:2])[0] != 0x6d63:
        raise OSError("an answer that is not memcached's UDP frame")
    text = reply[8:].decode("ascii", "replace").strip()
    if not text.startswith("VERSION "):
        raise OSError("unexpected answer %r" % text[:60])
    return text.split(" ", 1)[1]


def main():
    module = AnsibleModule(
        argument_spec=dict(address=dict(type="str", required=True),
                           port=dict(type="int", default=11211),
                           wait=dict(type="float", default=10.0)),
        supports_check_mode=True,
    )
    p = module.params
    addr, port = target(p["address"]), p["port"]
    where = "%s:%d" % ("[%s]" % addr if ":" in addr else addr, port)
    deadline = time.monotonic() + max(p["wait"], 0.0)
    while True:
        try:
            settings = stats_settings(addr, port, 2.0)
            break
        except (OSError, ValueError) as e:
            if time.monotonic() >= deadline:
                module.fail_json(msg="memcached does not answer over TCP on %s (%s): mcache needs "
                                 "memcached on the config's memcached.address and "
                                 "memcached.port, with UDP on (-l %s -p %d -U %d)"
                                 % (where, e, p["address"], port, port))
            time.sleep(0.5)
    ret = dict(changed=False, tcp_port=int(settings.get("tcpport", "0") or 0),
               udp_port=int(settings.get("udpport", "0") or 0),
               listen=settings.get("inter", ""))
    if ret["udp_port"] == 0:
        module.fail_json(msg="memcached on %s has UDP off (stats settings: udpport 0): mcache "
                         "answers GETs over UDP and fills from memcached's UDP replies; start "
                         "memcached with -U %d" % (where, port), **ret)
    if ret["udp_port"] != port:
        module.fail_json(msg="memcached on %s has UDP on port %d, not %d: mcache serves UDP on "
                         "the config's memcached.port; start memcached with -U %d"
                         % (where, ret["udp_port"], port, port), **ret)
    try:
        ret["version"] = udp_version(addr, port, 2.0)
    except OSError as e:
        module.fail_json(msg="memcached on %s does not answer over UDP (%s), though its UDP port "
                         "is %d: it listens on %s; mcache needs UDP on %s"
                         % (where, e, port, ret["listen"] or "?", p["address"]), **ret)
    module.exit_json(msg="memcached %s answers on %s over TCP and UDP" % (ret["version"], where),
                     **ret)


if __name__ == "__main__":
    main()
