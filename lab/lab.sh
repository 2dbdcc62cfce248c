#!/usr/bin/env bash
# mcache lab fleet: N hosts on this machine, reachable over ssh, that look like hosts to
# Ansible. See lab/README.md.
#
#   lab/lab.sh up [N]            bring up hosts 1..N (default $HOSTS or 3, max 30); idempotent:
#                                hosts already up (with the same init) are left alone, hosts
#                                above N are removed
#   lab/lab.sh down              tear everything down (idempotent)
#   lab/lab.sh status            one line per host: index name address init-pid state init
#   lab/lab.sh pid N             the host's init pid (in the machine's PID namespace)
#   lab/lab.sh reboot N          reboot host N: every process ends, what a reboot drops goes
#                                (pins, XDP and TC attachments, /run), its disk (/etc, /var,
#                                /opt, ...) stays, and its init starts again with the services
#                                the host enabled (rc2.d links or systemd units)
#   lab/lab.sh exec N -- CMD...  run CMD inside host N (nsenter -n -m -u -p)
#   lab/lab.sh ssh N [CMD...]    ssh root@host N with the lab key
#   lab/lab.sh inventory         (re)write inventory/lab/hosts.yml for the hosts that are up
#
# Environment: MCLAB_DIR (state, default /srv/mcache-lab), HOSTS (default count for `up`),
# INIT (plain: a tiny init of our own, the default; systemd: systemd is each host's init, in
# the host's own cgroup namespace, see lab/host-systemd.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
LAB_DIR="${MCLAB_DIR:-/srv/mcache-lab}"
BRIDGE=mclab0
BRIDGE_ADDR=198.18.0.1
PREFIX=24
MAX_HOSTS=30
INVENTORY="$REPO/inventory/lab/hosts.yml"
KEY="$LAB_DIR/ssh/id_ed25519"
# Must match ansible_control_path_dir in inventory/lab/group_vars/all.yml (the lab's ssh
# ControlPersist masters, closed by `down`): private to this user (0700), not in /tmp. Ansible
# expands ~ from $HOME as the shell does.
CP_DIR=~/.ansible/mcache-lab-cp
INIT="${INIT:-plain}"

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

name_of() { printf 'mc-lab-%s\n' "$1"; }
addr_of() { printf '198.18.0.%s\n' "$((10 + $1))"; }
veth_of() { printf 'mclab-v%s\n' "$1"; }
hostdir() { printf '%s/host%s\n' "$LAB_DIR" "$1"; }

check_index() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$MAX_HOSTS" ] ||
        die "host index must be 1..$MAX_HOSTS, got '$1'"
}

# The init a host was started with (plain or systemd).
init_of() { cat "$(hostdir "$1")/init" 2>/dev/null || echo plain; }

# The init pid of host i if it is alive and really ours (comm mclab-init, or systemd for a
# systemd host, PID 1 in its own PID namespace, in the host's netns); empty otherwise.
is_our_init() {
    local pid="$1" i="$2" comm nspid want=mclab-init
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [ "$(init_of "$i")" = systemd ] && want=systemd
    [ "$comm" = "$want" ] || return 1
    nspid="$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status" 2>/dev/null)" || return 1
    [ "$nspid" = 1 ] || return 1
    same_netns "$pid" "$(name_of "$i")"
}

# Is process pid in network namespace ns (same nsfs inode)?
same_netns() {
    local a b
    [ -e "/run/netns/$2" ] || return 1
    a="$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" || return 1
    b="$(stat -L -c %i "/run/netns/$2" 2>/dev/null)" || return 1
    [ -n "$a" ] && [ "$a" = "$b" ]
}

init_pid() {
    local i="$1" hd pid
    hd="$(hostdir "$i")"
    pid="$(cat "$hd/init.pid" 2>/dev/null || true)"
    if is_our_init "$pid" "$i"; then printf '%s\n' "$pid"; return 0; fi
    # fall back to a scan of the host's netns (e.g. the pid file was lost)
    [ -e "/run/netns/$(name_of "$i")" ] || return 0
    for pid in $(ip netns pids "$(name_of "$i")" 2>/dev/null); do
        if is_our_init "$pid" "$i"; then printf '%s\n' "$pid"; return 0; fi
    done
    return 0
}

host_up() { [ -n "$(init_pid "$1")" ]; }

# A live (non-zombie) process?
alive() {
    local st
    st="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

ensure_key() {
    mkdir -p "$LAB_DIR/ssh"
    chmod 700 "$LAB_DIR/ssh"
    if [ ! -f "$KEY" ] || [ ! -f "$KEY.pub" ]; then
        rm -f "$KEY" "$KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C mcache-lab -f "$KEY"
    fi
    if ! cmp -s "$KEY.pub" "$LAB_DIR/ssh/authorized_keys" 2>/dev/null; then
        cp "$KEY.pub" "$LAB_DIR/ssh/authorized_keys"
    fi
    chmod 600 "$KEY" "$LAB_DIR/ssh/authorized_keys"
}

ensure_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_ADDR/$PREFIX"; then
        ip addr add "$BRIDGE_ADDR/$PREFIX" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
}

ensure_cp_dir() {
    (umask 077 && mkdir -p "$CP_DIR")
    chmod 700 "$CP_DIR"
}

close_ssh_masters() {
    # ControlPersist masters outlive the hosts; a stale one would hang the next connection to
    # the same address. Close every master in the lab's control dir.
    local s
    [ -d "$CP_DIR" ] || return 0
    for s in "$CP_DIR"/*; do
        [ -S "$s" ] || continue
        ssh -o ControlPath="$s" -O exit mclab-control-master >/dev/null 2>&1 || true
        rm -f "$s"
    done
}

# cgroup v2 only, or the hybrid layout (v1 name=systemd plus v2 at unified/)?
cgroup_mode() {
    if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then echo unified
    else echo hybrid; fi
}

# The cgroups a systemd host runs in (systemd sees each as its root, through the cgroupns).
cgroup_dirs() {
    if [ "$(cgroup_mode)" = unified ]; then
        printf '%s\n' "/sys/fs/cgroup/mclab/host$1"
    else
        printf '%s\n' "/sys/fs/cgroup/systemd/mclab/host$1" "/sys/fs/cgroup/unified/mclab/host$1"
    fi
}

remove_cgroups() {
    local d
    for d in $(cgroup_dirs "$1"); do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# End every process of host i: its init (systemd powers off first: units stop), and with it its
# PID namespace, then the `unshare` that waited for it. Idempotent.
host_stop() {
    local i="$1" ns hd pid n
    ns="$(name_of "$i")"
    hd="$(hostdir "$i")"
    pid="$(init_pid "$i")"
    if [ -n "$pid" ] && [ "$(init_of "$i")" = systemd ]; then
        # systemd as a container's init powers off on SIGRTMIN+4: units stop, then it exits
        kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true
        for n in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.05
        done
    fi
    if [ -n "$pid" ] && alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for n in $(seq 1 60); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    # the `unshare` parent that waited for the init, if still there
    local upid
    upid="$(cat "$hd/unshare.pid" 2>/dev/null || true)"
    if [ -n "$upid" ] && [ -d "/proc/$upid" ] &&
       grep -qx unshare "/proc/$upid/comm" 2>/dev/null && same_netns "$upid" "$ns"; then
        # it exits by itself once the init is gone; give it a moment, then insist
        for n in $(seq 1 40); do
            alive "$upid" || break
            sleep 0.025
        done
        if alive "$upid"; then kill -TERM "$upid" 2>/dev/null || true; fi
    fi
}

# Remove every trace of host i (idempotent).
host_down() {
    local i="$1" ns veth hd
    ns="$(name_of "$i")"
    veth="$(veth_of "$i")"
    hd="$(hostdir "$i")"
    host_stop "$i"
    ip link del "$veth" >/dev/null 2>&1 || true
    ip netns del "$ns" >/dev/null 2>&1 || true
    remove_cgroups "$i"
    if [ -d "$hd" ]; then
        case "$hd" in "$LAB_DIR"/host[0-9]*) rm -rf --one-file-system "$hd" ;; esac
    fi
}

write_sshd_config() {
    local i="$1" hd
    hd="$(hostdir "$i")"
    [ -f "$hd/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "$(name_of "$i")" -f "$hd/ssh_host_ed25519_key"
    cat >"$hd/sshd_config" <<CFG
# generated by lab/lab.sh for $(name_of "$i")
ListenAddress $(addr_of "$i")
Port 22
HostKey $hd/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile $LAB_DIR/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 100
MaxStartups 100:30:200
LoginGraceTime 30
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
}

# Start host i (network now, boot in the background; the caller waits for readiness).
host_start() {
    local i="$1" ns veth hd addr
    ns="$(name_of "$i")"
    veth="$(veth_of "$i")"
    hd="$(hostdir "$i")"
    addr="$(addr_of "$i")"
    host_down "$i"
    mkdir -p "$hd"
    echo "$INIT" >"$hd/init"
    write_sshd_config "$i"

    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$addr/$PREFIX" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up

    host_boot "$i" fresh
}

# Boot host i's init in its network namespace (fresh: a new host; reboot: its disk is kept).
host_boot() {
    local i="$1" mode="$2" ns hd init
    ns="$(name_of "$i")"
    hd="$(hostdir "$i")"
    init="$(init_of "$i")"
    if [ "$init" = systemd ]; then
        # systemd manages the cgroup it starts in: a cgroup of the host's own, entered before
        # the namespaces are made, and a cgroup namespace that makes it the host's root.
        local d procs=()
        for d in $(cgroup_dirs "$i"); do mkdir -p "$d"; procs+=("$d/cgroup.procs"); done
        setsid sh -c 'while [ "$1" != -- ]; do echo $$ >"$1"; shift; done; shift; exec "$@"' \
            sh "${procs[@]}" -- ip netns exec "$ns" \
            unshare --cgroup --uts --pid --mount --fork --mount-proc --propagation private \
            env MCLAB_CGROUP_MODE="$(cgroup_mode)" \
            /bin/bash "$HERE/host-boot.sh" "$i" "$LAB_DIR" systemd "$mode" \
            </dev/null >>"$hd/boot.log" 2>&1 &
    else
        setsid ip netns exec "$ns" \
            unshare --uts --pid --mount --fork --mount-proc --propagation private \
            /bin/bash "$HERE/host-boot.sh" "$i" "$LAB_DIR" plain "$mode" \
            </dev/null >>"$hd/boot.log" 2>&1 &
    fi
    echo $! >"$hd/unshare.pid"
}

wait_ready() {
    local i="$1" hd pid n
    hd="$(hostdir "$i")"
    for n in $(seq 1 200); do   # 10 s
        if [ -f "$hd/ready" ]; then
            pid="$(init_pid "$i")"
            if [ -n "$pid" ]; then
                echo "$pid" >"$hd/init.pid"
                return 0
            fi
        fi
        if [ -f "$hd/unshare.pid" ] && ! alive "$(cat "$hd/unshare.pid")"; then
            break
        fi
        sleep 0.05
    done
    log "host $i did not come up; boot log:"
    sed 's/^/    /' "$hd/boot.log" >&2 || true
    return 1
}

wait_ssh() {
    # sshd has bound its address before it daemonized; check the port answers anyway.
    local i="$1" n addr
    addr="$(addr_of "$i")"
    for n in $(seq 1 100); do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$addr/22" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "host $i: sshd not answering on $addr:22; sshd log:"
    sed 's/^/    /' "$(hostdir "$i")/sshd.log" >&2 || true
    return 1
}

up_hosts() {
    local i
    for i in $(seq 1 "$MAX_HOSTS"); do
        if host_up "$i"; then printf '%s\n' "$i"; fi
    done
}

write_inventory() {
    local i tmp
    mkdir -p "$(dirname "$INVENTORY")"
    tmp="$INVENTORY.tmp.$$"
    {
        echo "# Generated by lab/lab.sh (make lab-up): the lab fleet's hosts. Do not edit."
        echo "# Connection settings shared by all lab hosts are in group_vars/all.yml."
        echo "all:"
        echo "  children:"
        echo "    mcache:"
        echo "      hosts:"
        for i in $(up_hosts); do
            echo "        $(name_of "$i"):"
            echo "          ansible_host: $(addr_of "$i")"
            echo "          mcache_lab_index: $i"
            echo "          mcache_memcached_address: $(addr_of "$i")"
            echo "          mcache_interface: eth0"
            echo "          mcache_lab_init: $(init_of "$i")"
        done
        echo "      vars:"
        echo "        ansible_user: root"
        echo "        ansible_ssh_private_key_file: $KEY"
        echo "        ansible_ssh_common_args: >-"
        echo "          -o ControlMaster=auto -o ControlPersist=60s"
        echo "          -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
        echo "          -o IdentitiesOnly=yes -o ConnectTimeout=10 -o LogLevel=ERROR"
    } >"$tmp"
    mv "$tmp" "$INVENTORY"
}

cmd_up() {
    local n="${1:-${HOSTS:-3}}" i started=() rc=0
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_HOSTS" ] ||
        die "HOSTS must be 1..$MAX_HOSTS, got '$n'"
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    case "$INIT" in plain | systemd) ;; *) die "INIT must be plain or systemd, got '$INIT'" ;; esac
    mkdir -p "$LAB_DIR"
    ensure_key
    ensure_bridge
    ensure_cp_dir
    # hosts above n go away
    for i in $(seq $((n + 1)) "$MAX_HOSTS"); do
        if host_up "$i" || [ -e "/run/netns/$(name_of "$i")" ] || [ -d "$(hostdir "$i")" ]; then
            log "removing $(name_of "$i")"
            host_down "$i"
        fi
    done
    for i in $(seq 1 "$n"); do
        if host_up "$i" && [ "$(init_of "$i")" = "$INIT" ]; then continue; fi
        started+=("$i")
        host_start "$i"
    done
    if [ "${#started[@]}" -gt 0 ]; then
        # a master to a previous incarnation of these addresses would hang: close them all
        close_ssh_masters
    fi
    for i in "${started[@]}"; do wait_ready "$i" || rc=1; done
    [ "$rc" -eq 0 ] || die "some hosts failed to boot"
    for i in "${started[@]}"; do wait_ssh "$i" || rc=1; done
    [ "$rc" -eq 0 ] || die "some hosts' sshd failed"
    write_inventory
    if [ "${#started[@]}" -gt 0 ]; then
        log "up: ${#started[@]} started (${started[*]}), $n total; inventory: ${INVENTORY#"$REPO"/}"
    else
        log "up: all $n hosts already running"
    fi
}

cmd_down() {
    local i
    close_ssh_masters
    for i in $(seq 1 "$MAX_HOSTS"); do
        if host_up "$i" || [ -e "/run/netns/$(name_of "$i")" ] || [ -d "$(hostdir "$i")" ] ||
           ip link show "$(veth_of "$i")" >/dev/null 2>&1; then
            host_down "$i"
        fi
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    rm -f "$INVENTORY"
    log "down"
}

cmd_status() {
    local i pid state
    for i in $(seq 1 "$MAX_HOSTS"); do
        pid="$(init_pid "$i")"
        if [ -n "$pid" ]; then state=up
        elif [ -e "/run/netns/$(name_of "$i")" ] || [ -d "$(hostdir "$i")" ]; then state=stale
        else continue
        fi
        printf '%s %s %s %s %s %s\n' "$i" "$(name_of "$i")" "$(addr_of "$i")" "${pid:--}" \
            "$state" "$(init_of "$i")"
    done
}

cmd_pid() {
    local i="${1:-}" pid
    check_index "$i"
    pid="$(init_pid "$i")"
    [ -n "$pid" ] || die "$(name_of "$i") is not up"
    printf '%s\n' "$pid"
}

# What the kernel keeps of a host whose processes all ended: its network namespace (held by
# /run/netns), and there the XDP programs and TC filters attached to its links. A reboot drops
# them (its bpffs, with the pins, went with its mount namespace; its cgroups go below).
drop_attachments() {
    local ns link
    ns="$(name_of "$1")"
    for link in $(ip -n "$ns" -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip -n "$ns" link set dev "$link" xdpgeneric off 2>/dev/null || true
        ip -n "$ns" link set dev "$link" xdpdrv off 2>/dev/null || true
        tc -n "$ns" qdisc del dev "$link" clsact 2>/dev/null || true
    done
}

cmd_reboot() {
    local i="${1:-}" hd ns n left pid
    check_index "$i"
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    host_up "$i" || die "$(name_of "$i") is not up"
    hd="$(hostdir "$i")"
    ns="$(name_of "$i")"
    log "rebooting $ns ($(init_of "$i"))"
    host_stop "$i"
    # every process of the host is gone with its PID namespace; wait for the last of them
    for n in $(seq 1 100); do
        left=""
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            alive "$pid" && left="$left $pid"
        done
        [ -z "$left" ] && break
        sleep 0.05
    done
    [ -z "$left" ] || die "$ns: processes left after its init ended:$left"
    drop_attachments "$i"
    # /run: a plain host's is a directory bound there (a systemd host's a tmpfs, gone already)
    case "$hd" in "$LAB_DIR"/host[0-9]*) rm -rf --one-file-system "$hd/run" ;; esac
    rm -f "$hd/ready" "$hd/init.pid"
    remove_cgroups "$i"
    # a ControlPersist master to the old sshd would hang the next connection
    close_ssh_masters
    host_boot "$i" reboot
    wait_ready "$i" || die "$ns did not come back up"
    wait_ssh "$i" || die "$ns: sshd not answering after the reboot"
    log "$ns is up again"
}

cmd_exec() {
    local i="${1:-}" pid
    check_index "$i"
    shift
    [ "${1:-}" = "--" ] && shift
    [ "$#" -gt 0 ] || die "usage: lab.sh exec N -- CMD..."
    pid="$(init_pid "$i")"
    [ -n "$pid" ] || die "$(name_of "$i") is not up"
    exec nsenter -t "$pid" -n -m -u -p -- "$@"
}

cmd_ssh() {
    local i="${1:-}"
    check_index "$i"
    shift
    [ "${1:-}" = "--" ] && shift
    ensure_cp_dir
    exec ssh -i "$KEY" -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=no -o LogLevel=ERROR -o ConnectTimeout=10 \
        -o ControlMaster=auto -o ControlPersist=60s -o "ControlPath=$CP_DIR/%C" \
        "root@$(addr_of "$i")" "$@"
}

main() {
    local cmd="${1:-}"
    [ "$#" -gt 0 ] && shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down ;;
        status) cmd_status ;;
        pid) cmd_pid "$@" ;;
        reboot) cmd_reboot "$@" ;;
        exec) cmd_exec "$@" ;;
        ssh) cmd_ssh "$@" ;;
        inventory) write_inventory ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

main "$@"
