#!/usr/bin/env bash
# Remove the edgetailor device agent that deploy/install-agent.sh installed.
#
#   sudo deploy/uninstall-agent.sh           # stop it, remove the unit and the virtualenv
#   sudo deploy/uninstall-agent.sh --purge   # also the settings, TLS files, models and the user
#
# Without --purge, /etc/edgetailor and /var/lib/edgetailor-agent stay: installing again resumes
# with the same identity, active model and unacknowledged results.
set -euo pipefail

PREFIX=/opt/edgetailor
CONF_DIR=/etc/edgetailor
DATA_DIR=/var/lib/edgetailor-agent
UNIT=edgetailor-agent.service
UNIT_PATH=/etc/systemd/system/$UNIT
SERVICE_USER=edgetailor
PURGE=0

case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall-agent: unknown option $1 (use --purge or nothing)" >&2; exit 1 ;;
esac
[[ $EUID -eq 0 ]] || { echo "uninstall-agent: run as root (sudo)" >&2; exit 1; }

if command -v systemctl >/dev/null && [[ -f $UNIT_PATH ]]; then
    echo "==> stopping $UNIT"
    systemctl disable --now "$UNIT" || true
    rm -f "$UNIT_PATH"
    systemctl daemon-reload
fi
echo "==> removing $PREFIX"
rm -rf "$PREFIX"
if [[ $PURGE -eq 1 ]]; then
    echo "==> removing $CONF_DIR, $DATA_DIR and the $SERVICE_USER user"
    rm -rf "$CONF_DIR" "$DATA_DIR" /run/edgetailor
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" || true
    fi
else
    echo "kept $CONF_DIR and $DATA_DIR (remove them with --purge)"
fi
echo "done"
