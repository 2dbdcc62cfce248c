#!/bin/bash
# Boot one lab host. Runs as PID 1 of the host's new PID namespace, inside its network
# namespace and its own mount and UTS namespaces (started by lab/lab.sh through
# `ip netns exec mc-lab-N unshare --uts --pid --mount --fork --mount-proc`).
# Sets the hostname, mounts the host's private file systems, starts sshd, then execs
# mclab-init, which holds the namespaces until lab-down; with INIT systemd, execs systemd as the
# host's init instead (lab/host-systemd.sh, also in the host's own cgroup namespace).
# MODE fresh: a new host; reboot (lab.sh reboot): the same host booting again, its disk (the
# overlays' upper layers) kept, and the services it enabled started as a boot starts them.
#
#   host-boot.sh INDEX LAB_DIR [plain|systemd] [fresh|reboot]
set -euo pipefail
i="$1"
LAB_DIR="$2"
INIT="${3:-plain}"
MODE="${4:-fresh}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HD="$LAB_DIR/host$i"
NAME="mc-lab-$i"

hostname "$NAME"

# Private, writable views of the machine's tree (upper/work dirs per host, in $HD).
for d in etc var opt usr/local root; do
    key="${d//\//_}"
    mkdir -p "$HD/ov/$key/upper" "$HD/ov/$key/work"
    mount -t overlay "ov-$NAME-$key" \
        -o "lowerdir=/$d,upperdir=$HD/ov/$key/upper,workdir=$HD/ov/$key/work" "/$d"
done
# The machine's own mcache state must not leak into a host: its overlays' lower layer is the
# machine's tree, where an agent run on the machine itself (the README's single-host commands,
# a benchmark, a test) leaves /var/lib/mcache, /etc/mcache and the like. Removing them in the
# overlay records whiteouts in the host's upper layer; the machine's files stay as they are.
# A reboot keeps the host's own (its upper layer holds them by then).
if [ "$MODE" != reboot ]; then
    rm -rf /var/lib/mcache /etc/mcache /opt/mcache /var/log/mcache \
        /etc/systemd/system/mcache-agent.service /etc/systemd/system/mcache-memcached.service \
        /etc/systemd/system/memcached.service.d /etc/init.d/mcache-agent \
        /etc/init.d/mcache-memcached /etc/rc?.d/[SK][0-9][0-9]mcache-*
fi

# Identity files live in the host's own /etc (the overlay's upper dir, never the machine's).
echo "$NAME" >/etc/hostname
{
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    for j in $(seq 1 30); do echo "198.18.0.$((10 + j)) mc-lab-$j"; done
    echo "198.18.0.1 mclab-controller"
} >/etc/hosts

if [ "$INIT" = systemd ]; then
    # shellcheck source=lab/host-systemd.sh
    . "$HERE/host-systemd.sh"  # execs systemd
fi

mkdir -p "$HD/run"
mount --bind "$HD/run" /run
mkdir -p /run/sshd /run/lock
chmod 0755 /run/sshd
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true

ip link set lo up

/usr/sbin/sshd -f "$HD/sshd_config" -E "$HD/sshd.log"

# Runlevel 2 as sysvinit's rc runs it: the start links of /etc/rc2.d in order, for the services
# this host enabled itself (update-rc.d; they are in its overlay's upper layer). The machine's
# own links (its ssh, memcached, ...) are the machine's services and stay out, as on systemd
# hosts, where they are masked.
if [ -d "$HD/ov/etc/upper/rc2.d" ]; then
    for link in "$HD"/ov/etc/upper/rc2.d/S[0-9][0-9]*; do
        name="$(basename "$link")"
        [ -x "/etc/rc2.d/$name" ] || continue
        echo "rc2: $name start"
        timeout 60 "/etc/rc2.d/$name" start </dev/null || echo "rc2: $name start failed ($?)"
    done
fi

exec -a mclab-init /usr/bin/python3 "$HERE/mclab_init.py" "$HD/ready"
