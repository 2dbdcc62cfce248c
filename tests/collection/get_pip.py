"""Stand-in for ansible-test's get-pip bootstrap script, whose download host is out of reach
here: pip from the standard library's bundled wheel, then the pip asked for from PyPI. Both
trust the system's CA bundle (pip's own bundle lacks a TLS-intercepting proxy's CA, and
ansible-test runs pip with no config file and a sanitized environment)."""

import ensurepip
import os
import shutil
import subprocess
import sys
import sysconfig

CA = "/etc/ssl/certs/ca-certificates.crt"
ensurepip.bootstrap()
cert = ["--cert", CA] if os.path.exists(CA) else []
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
rc = subprocess.call([sys.executable, "-m", "pip", "install", *cert, *args])
bundle = os.path.join(sysconfig.get_paths()["purelib"], "pip", "_vendor", "certifi", "cacert.pem")
if rc == 0 and cert and os.path.exists(bundle):
    shutil.copyfile(CA, bundle)
sys.exit(rc)
