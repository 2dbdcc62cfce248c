#!/usr/bin/env bash
# mcache set-up: system packages, kernel headers link, bpffs, and the project venv.
#
# Idempotent: every step checks before it acts, so a second run changes nothing and
# takes a few seconds. Run as root on Debian bookworm (no systemd needed).
#
#   bash scripts/setup.sh            # from the repository root (or anywhere)
#   SETUP_FORCE=1 bash scripts/setup.sh   # reinstall the venv packages
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
STAMP="$VENV/.setup-stamp"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive
# uv and pip: trust the system CA store (it may hold a proxy's CA that bundled roots lack).
if [ -z "${SSL_CERT_FILE:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

APT_PACKAGES=(
    python3-bpfcc bpfcc-tools bpftool
    memcached libmemcached-tools
    linux-headers-amd64
    iproute2 openssh-server openssh-client
    ethtool tcpdump python3-pip
    gcc  # builds bench/udpgen.c, the benchmarks' own load generator
    prometheus  # promtool (rule unit tests) and the server the alerting test runs
    libpcap0.8  # compiles `mcache-agent capture --filter` expressions (pcap_compile)
    tshark      # reads the captures back in the tests
)

# --- 1. system packages ----------------------------------------------------------------
missing_packages() {
    local p st
    for p in "${APT_PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$st" = "installed" ] || printf '%s\n' "$p"
    done
}

memcached_pid() {
    # The Debian init script's pidfile; prints a pid only if that process is alive.
    local f=/run/memcached/memcached.pid pid
    [ -r "$f" ] || return 0
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && printf '%s\n' "$pid"
    return 0
}

install_packages() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing: ${missing[*]}"

    # Keep package scripts from starting services (memcached, ssh): a policy-rc.d that
    # denies every start, only for the duration of the install and only if none exists.
    local policy=/usr/sbin/policy-rc.d made_policy=0 before_pid after_pid
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# mcache setup: no service starts during install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    before_pid="$(memcached_pid)"

    local rc=0
    {
        apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } || rc=$?

    [ "$made_policy" -eq 1 ] && rm -f "$policy"
    # If the install started Debian's memcached anyway, stop that one (by its pidfile).
    after_pid="$(memcached_pid)"
    if [ -n "$after_pid" ] && [ "$after_pid" != "$before_pid" ]; then
        log "stopping the memcached the package started (pid $after_pid)"
        kill "$after_pid" 2>/dev/null || true
    fi
    [ "$rc" -eq 0 ] || die "apt-get failed ($rc)"
    [ -z "$(missing_packages)" ] || die "still missing: $(missing_packages | tr '\n' ' ')"
}

# --- 2. kernel headers for bcc ----------------------------------------------------------
# bcc compiles against /lib/modules/$(uname -r)/build; this kernel has none, Debian's
# newest headers work (verified with the 6.1 headers on a 6.18 kernel).
link_headers() {
    local mod="/lib/modules/$(uname -r)" amd64 common
    if [ -e "$mod/build/include" ] && [ -e "$mod/source/include" ]; then
        return 0
    fi
    amd64="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)"
    [ -n "$amd64" ] || die "no /usr/src/linux-headers-*-amd64 (linux-headers-amd64 not installed?)"
    common="${amd64%-amd64}-common"
    [ -d "$common" ] || die "missing $common"
    mkdir -p "$mod"
    if [ ! -e "$mod/build/include" ]; then
        log "linking $mod/build -> $amd64"
        ln -sfn "$amd64" "$mod/build"
    fi
    if [ ! -e "$mod/source/include" ]; then
        log "linking $mod/source -> $common"
        ln -sfn "$common" "$mod/source"
    fi
}

# --- 3. bpffs ----------------------------------------------------------------------------
mount_bpffs() {
    if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = "bpf_fs" ]; then
        return 0
    fi
    log "mounting bpffs on /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
}

# --- 3b. test address guard ---------------------------------------------------------------
# Tests and the lab use 198.18.0.0/15 inside namespaces made here. A socket opened by mistake
# in the root namespace must fail here, not leave the machine: blackhole the range (the lab's
# own 198.18.0.0/24 on its bridge is more specific and still routes).
guard_test_range() {
    if ! ip route show type blackhole 2>/dev/null | grep -q '^blackhole 198.18.0.0/15'; then
        log "blackholing 198.18.0.0/15 in the root namespace"
        ip route replace blackhole 198.18.0.0/15
    fi
}

# --- 4. venv -----------------------------------------------------------------------------
find_python311() {
    local c real
    for c in /root/.pyenv/versions/3.11*/bin/python3.11 \
             "$(command -v python3.11 2>/dev/null || true)" \
             /usr/bin/python3.11; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        real="$("$c" -c 'import sys; assert sys.version_info[:2] == (3, 11); print(sys.executable)' 2>/dev/null)" || continue
        [ -n "$real" ] && { printf '%s\n' "$real"; return 0; }
    done
    if command -v uv >/dev/null 2>&1; then
        uv python find 3.11 2>/dev/null && return 0
    fi
    return 1
}

find_uv() {
    local py="$1"
    if command -v uv >/dev/null 2>&1; then command -v uv; return 0; fi
    if [ -x "$(dirname "$py")/uv" ]; then printf '%s\n' "$(dirname "$py")/uv"; return 0; fi
    log "uv not found: installing it with pip"
    "$py" -m pip install -q uv >&2 || return 1
    "$py" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_path("scripts"), "uv"))'
}

stamp_value() {
    {
        sha256sum pyproject.toml
        printf 'python=%s\n' "$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)"
        printf 'bcc=%s\n' "$(readlink "$(site_packages)/bcc" 2>/dev/null)"
    } | sha256sum | cut -d' ' -f1
}

site_packages() {
    printf '%s\n' "$VENV/lib/python3.11/site-packages"
}

make_venv() {
    local py uv sp
    if [ -z "${SETUP_FORCE:-}" ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] &&
       [ "$(cat "$STAMP")" = "$(stamp_value)" ] && [ -e "$(site_packages)/bcc/__init__.py" ]; then
        return 0
    fi
    py="$(find_python311)" || die "no Python 3.11 found (python3.11, pyenv or uv)"
    uv="$(find_uv "$py")" || die "cannot find or install uv"
    if [ ! -x "$VENV/bin/python" ] ||
       ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
        log "creating $VENV with $py"
        rm -rf "$VENV"
        "$uv" venv -q --python "$py" "$VENV"
    fi
    sp="$(site_packages)"
    [ -d "$sp" ] || die "unexpected venv layout: no $sp"
    # bcc: Debian's pure-Python wrapper over libbcc.so, without the rest of dist-packages.
    [ -d /usr/lib/python3/dist-packages/bcc ] || die "python3-bpfcc not installed"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$sp/bcc"

    if [ ! -f mcache_agent/__init__.py ]; then
        log "WARNING: mcache_agent/__init__.py missing; the editable install may fail"
    fi
    log "installing mcache (editable) with dev extras"
    VIRTUAL_ENV="$VENV" "$uv" pip install -q --python "$VENV/bin/python" -e '.[dev]'
    "$VENV/bin/python" -c 'import bcc, yaml, jsonschema, pymemcache, pyroute2, prometheus_client' ||
        die "venv imports failed"
    stamp_value >"$STAMP"
}

# The repository as the collection mcache.fleet, for ansible.cfg's collections_path.
link_collection() {
    local dir=build/collections/ansible_collections/mcache
    mkdir -p "$dir"
    [ "$(readlink "$dir/fleet" 2>/dev/null)" = "../../../.." ] || ln -sfn ../../../.. "$dir/fleet"
}

install_packages
link_headers
mount_bpffs
guard_test_range
make_venv
link_collection
log "ok"
