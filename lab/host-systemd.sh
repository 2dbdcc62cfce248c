#!/bin/bash
# The systemd part of booting a lab host (INIT=systemd), sourced by lab/host-boot.sh after the
# host's overlays: gives the host what systemd needs as a container's init (its own /run,
# /tmp, cgroup trees rooted in the host's cgroup namespace, a read-only /sys), keeps every unit
# that would reach past the host out, and execs systemd as the host's PID 1 with a target of
# its own: journald, the host's sshd, and a unit that tells lab.sh the host is ready.
#
# The host shares the machine's /dev, /proc/sys and kernel: a stock boot would apply sysctls,
# load modules, create device nodes and empty /tmp there. So every unit the boot targets pull in
# (sysinit, local-fs, sockets, timers, paths, network-online, ...) is masked in the host's own
# /etc, except journald; the services the fleet installs start in that reduced system.

# $HD, $NAME, $i come from host-boot.sh.

# --- file systems systemd expects
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock
# never the machine's /tmp: systemd-tmpfiles empties /tmp at boot
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
[ "$(stat -f -c %T /tmp)" = tmpfs ] || { echo "no private /tmp: refusing to boot systemd" >&2; exit 1; }
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
if [ "${MCLAB_CGROUP_MODE:-hybrid}" = unified ]; then
    umount /sys/fs/cgroup
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
    mkdir -p /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
fi
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
# Read-only /sys: systemd and udev then treat the host as a container and leave devices alone.
mount -o remount,ro /sys

# --- identity (kept across a reboot)
[ "${MODE:-fresh}" = reboot ] && [ -s /etc/machine-id ] || systemd-id128 new >/etc/machine-id
: >/etc/fstab

# --- only what the host needs
mask_dir=/etc/systemd/system
if [ "${MODE:-fresh}" != reboot ]; then
    # The machine's units, once: at a reboot the wants dirs also hold what the host enabled
    # itself (the fleet's units), which must start, not be masked.
    for wants in /lib/systemd/system/*.target.wants /etc/systemd/system/*.target.wants; do
        [ -d "$wants" ] || continue
        for unit in "$wants"/*; do
            name="$(basename "$unit")"
            case "$name" in systemd-journald*) continue ;; esac
            ln -sfn /dev/null "$mask_dir/$name"
        done
    done
fi
for name in systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-sysctl.service systemd-modules-load.service systemd-tmpfiles-setup.service \
    systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer systemd-remount-fs.service \
    systemd-binfmt.service systemd-random-seed.service systemd-update-utmp.service \
    systemd-timesyncd.service systemd-networkd-wait-online.service networking.service \
    console-getty.service getty@.service serial-getty@.service kmod-static-nodes.service \
    proc-sys-fs-binfmt_misc.automount sys-fs-fuse-connections.mount sys-kernel-config.mount \
    sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount dev-mqueue.mount \
    systemd-journal-flush.service ssh.service ssh.socket memcached.service; do
    ln -sfn /dev/null "$mask_dir/$name"
done

# What the host enabled itself (systemctl enable: multi-user.target.wants in its own /etc, not
# masked) starts at boot as multi-user.target would start it; multi-user.target itself would
# pull in the machine's boot (see above).
enabled=""
for unit in /etc/systemd/system/multi-user.target.wants/*; do
    [ -e "$unit" ] || continue
    name="$(basename "$unit")"
    [ "$(readlink "$mask_dir/$name" 2>/dev/null)" = /dev/null ] && continue
    enabled="$enabled $name"
done
cat >"$mask_dir/mclab.target" <<UNIT
[Unit]
Description=mcache lab host $NAME
AllowIsolate=yes
Wants=systemd-journald.service mclab-sshd.service mclab-ready.service$enabled
UNIT
cat >"$mask_dir/mclab-sshd.service" <<UNIT
[Unit]
Description=sshd of lab host $NAME (on its own address)

[Service]
ExecStart=/usr/sbin/sshd -D -f $HD/sshd_config -E $HD/sshd.log
RuntimeDirectory=sshd
Restart=on-failure
UNIT
cat >"$mask_dir/mclab-ready.service" <<UNIT
[Unit]
Description=tell lab/lab.sh that $NAME is up
After=mclab-sshd.service
Requires=mclab-sshd.service

[Service]
Type=oneshot
ExecStartPre=/bin/sh -c 'for n in \$(seq 1 100); do [ -s /run/sshd.pid ] && exit 0; sleep 0.05; done; exit 1'
ExecStart=/usr/bin/touch $HD/ready
RemainAfterExit=yes
UNIT

ip link set lo up
exec env -i container=mclab PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --unit=mclab.target --log-target=journal-or-kmsg
