"""The repository as the Ansible collection mcache.fleet: the tarball builds, installs into an
empty collections path, ansible-doc shows every plugin from there, and ansible-test sanity passes
on what the tarball holds. (The playbooks of the installed copy run against the lab in
tests/fleet/test_fleet.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
PLUGINS = {"module": ["mcache.fleet.config", "mcache.fleet.memcached_check", "mcache.fleet.probe",
                      "mcache.fleet.rollback", "mcache.fleet.signals", "mcache.fleet.status",
                      "mcache.fleet.versions"],
           "lookup": ["mcache.fleet.release"],
           "callback": ["mcache.fleet.rollout_record"],
           "filter": ["mcache.fleet.config_faults", "mcache.fleet.canary_verdict",
                      "mcache.fleet.canary_describe"]}
# ansible-test keeps its venvs under $HOME/.ansible/test: one place of its own, kept between
# runs on this machine (a fresh CI machine fills it once).
TEST_HOME = Path("/var/cache/mcache-ansible-test")
CA = Path("/etc/ssl/certs/ca-certificates.crt")


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def build_collection(out: Path) -> Path:
    r = run([str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path",
             str(out)], cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    (tarball,) = out.glob("mcache-fleet-*.tar.gz")
    return tarball


def install_collection(tarball: Path, path: Path) -> Path:
    # Away from the repository's ansible.cfg (`make` exports ANSIBLE_CONFIG): its collections
    # path links this checkout as mcache.fleet, and ansible-galaxy would call the tarball
    # "already installed" and install nothing.
    r = run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--force", "-p",
             str(path), str(tarball)], cwd=path.parent,
            env={"ANSIBLE_CONFIG": str(path.parent / "none.cfg"),
                 "ANSIBLE_COLLECTIONS_PATH": str(path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (path / "ansible_collections" / "mcache" / "fleet" / "MANIFEST.json").is_file(), r.stdout
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield build_collection(tmp_path_factory.mktemp("build"))


def test_the_tarball_holds_the_content_and_the_agent(built: Path) -> None:
    with tarfile.open(built) as t:
        names = set(t.getnames())
    for must in ("MANIFEST.json", "meta/runtime.yml", "plugins/modules/config.py",
                 "plugins/doc_fragments/agent.py", "roles/mcache_host/tasks/main.yml",
                 "roles/mcache_config/meta/argument_specs.yml", "playbooks/canary.yml",
                 "prometheus/mcache.rules.yml", "pyproject.toml", "mcache_agent/daemon.py",
                 "bpf/xdp_ingress.c", "schemas/mcache-config.schema.json", "COPYING"):
        assert must in names, must
    assert not [n for n in names if n.startswith(("tests/unit", "bench", "lab", ".venv", "build"))]


def test_ansible_doc_shows_every_plugin_of_the_installed_copy(built: Path, tmp_path: Path) -> None:
    colls = install_collection(built, tmp_path / "collections")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(colls), "ANSIBLE_CONFIG": str(tmp_path / "none.cfg")}
    listed = run([str(BIN / "ansible-doc"), "-l", "mcache.fleet"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    for kind, names in PLUGINS.items():
        for name in names:
            r = run([str(BIN / "ansible-doc"), "-t", kind, name], cwd=tmp_path, env=env)
            assert r.returncode == 0 and str(colls) in r.stdout, (name, r.stdout, r.stderr)
            if kind == "module":
                assert name.split(".")[-1] in listed.stdout
    socket_doc = run([str(BIN / "ansible-doc"), "mcache.fleet.probe"], cwd=tmp_path, env=env)
    assert "control socket" in socket_doc.stdout  # from the shared doc fragment
    roles = run([str(BIN / "ansible-doc"), "-t", "role", "-l", "mcache.fleet"], cwd=tmp_path,
                env=env)
    assert "mcache_host" in roles.stdout and "mcache_config" in roles.stdout, roles.stdout


def _stand_in_get_pip(home: Path) -> None:
    """ansible-test bootstraps pip in its venvs with a script from a host this machine cannot
    reach: put a stand-in where it looks first (see get_pip.py next to this file)."""
    source = (BIN.parent / "lib" / "python3.11" / "site-packages" / "ansible_test" / "_internal"
              / "python_requirements.py").read_text()
    version = re.search(r"default_packages = dict\(\s*pip='([\d.]+)'", source).group(1)
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"get_pip_{version.replace('.', '_')}.py"
    target.write_text((Path(__file__).parent / "get_pip.py").read_text())


def test_ansible_test_sanity_passes(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "ansible_collections" / "mcache" / "fleet"
    root.mkdir(parents=True)
    with tarfile.open(built) as t:
        t.extractall(root, filter="data")
    _stand_in_get_pip(TEST_HOME)
    r = run([str(BIN / "ansible-test"), "sanity", "--python", "3.11", "--color", "no"],
            cwd=root, env={"HOME": str(TEST_HOME), "PATH": f"{BIN}:{os.environ['PATH']}"},
            timeout=2400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    ran = re.findall(r'Running sanity test "([\w-]+)"', r.stdout + r.stderr)
    for must in ("validate-modules", "ansible-doc", "pylint", "pep8", "yamllint", "import",
                 "compile", "runtime-metadata", "shebang"):
        assert must in ran, (must, ran)
