#!/usr/bin/env bash
# Install Ryu 4.34 into its own venv (.venv-ryu) so `ryu-manager controller.app`
# runs the same app as `iotguard run`.  Ryu 4.34 (2020) needs three fixes on
# Python 3.10+; see ../shared/notes/ovs-mininet.md:
#   1. build with setuptools<68 (get_script_args was removed in 68);
#   2. eventlet.wsgi.ALREADY_HANDLED no longer exists: patch ryu/app/wsgi.py;
#   3. eventlet 0.33.3 or 0.41.3 work with that patch.
# Idempotent.  Usage: REPO=/path vagrant/install-ryu.sh
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${RYU_VENV:-$REPO/.venv-ryu}
log() { printf '[install-ryu] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import ryu, ryu.app.wsgi' 2>/dev/null || [ "$("$PY" -c 'import ryu; print(ryu.version)' 2>/dev/null)" != "4.34" ]; then
    log "building ryu 4.34"
    "$PY" -m pip install -q 'setuptools<68' pbr wheel
    "$PY" -m pip install -q --no-build-isolation 'ryu==4.34' 'eventlet==0.41.3'
fi
WSGI=$("$PY" -c 'import importlib.util as u; print(u.find_spec("ryu.app.wsgi").origin)' 2>/dev/null || true)
if [ -z "$WSGI" ]; then
    WSGI=$("$PY" -c 'import ryu, os; print(os.path.join(os.path.dirname(ryu.__file__), "app", "wsgi.py"))')
fi
if grep -qE '^[[:space:]]*from eventlet.wsgi import ALREADY_HANDLED' "$WSGI"; then
    log "patching $WSGI (ALREADY_HANDLED)"
    sed -i -E 's/^([[:space:]]*)from eventlet.wsgi import ALREADY_HANDLED[[:space:]]*$/\1import eventlet.wsgi; ALREADY_HANDLED = getattr(eventlet.wsgi, "ALREADY_HANDLED", None)/' "$WSGI"
fi
# iotguard's own runtime dependencies, without os-ken: compat.py must fall back to Ryu.
"$PY" -c 'import numpy, sklearn, networkx, yaml, prometheus_client' 2>/dev/null || \
    "$PY" -m pip install -q numpy scikit-learn networkx PyYAML prometheus_client
if "$PY" -c 'import os_ken' 2>/dev/null; then
    echo "install-ryu: os_ken is importable in $VENV; the Ryu fallback would not be exercised" >&2
    exit 1
fi
"$PY" -c 'import ryu.app.wsgi, ryu.base.app_manager' >/dev/null
log "ryu $("$PY" -c 'import ryu; print(ryu.version)') ready in $VENV ($VENV/bin/ryu-manager)"
