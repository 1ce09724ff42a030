#!/usr/bin/env bash
# Install the edgetailor device agent on a board (Raspberry Pi OS, Jetson Linux, Debian/Ubuntu).
#
#   sudo ./install-agent.sh --broker mqtts://broker.lan:8883 --id pi-kitchen-01 \
#        --ca ca.crt --cert pi-kitchen-01.crt --key pi-kitchen-01.key [--trust-key signing.pub]
#
# Creates the "edgetailor" system user, a virtualenv in /opt/edgetailor/venv with
# 'edgetailor[device]' (falling back to tflite-runtime with numpy<2 where ai-edge-litert has no
# wheel, e.g. 32-bit Raspberry Pi OS), copies the TLS files to /etc/edgetailor/tls, writes
# /etc/edgetailor/agent.env and the systemd unit, and starts the agent.
# Certificates come from the host: `edgetailor certs issue DEVICE_ID` (see deploy/mosquitto/README.md).
set -euo pipefail

PREFIX=/opt/edgetailor
CONF_DIR=/etc/edgetailor
UNIT_PATH=/etc/systemd/system/edgetailor-agent.service
SERVICE_USER=edgetailor
PACKAGE="edgetailor[device]"
BROKER="" DEVICE_ID="" CA="" CERT="" KEY="" TRUST_KEY="" EXTRA_ARGS="" START=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'USAGE'

Options:
  --broker URL        mqtts://HOST:8883 (required)
  --id DEVICE_ID      must equal the common name of --cert (required)
  --ca FILE           the CA certificate (ca.crt) (required)
  --cert FILE         this device's certificate (required)
  --key FILE          this device's private key (required)
  --trust-key FILE    the host's manifest-signing public key (signing.pub); strongly advised
  --package SPEC      what pip installs (default: 'edgetailor[device]'; a wheel path or
                      'edgetailor[device] @ file:///path' works too)
  --agent-args ARGS   extra edgetailor-agent arguments, e.g. "--tag site=lab --threads 2"
  --no-start          install everything but do not enable or start the service
USAGE
}

die() { echo "install-agent: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --broker) BROKER="$2"; shift 2 ;;
        --id) DEVICE_ID="$2"; shift 2 ;;
        --ca) CA="$2"; shift 2 ;;
        --cert) CERT="$2"; shift 2 ;;
        --key) KEY="$2"; shift 2 ;;
        --trust-key) TRUST_KEY="$2"; shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --agent-args) EXTRA_ARGS="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done

[[ $EUID -eq 0 ]] || die "run as root (sudo): it creates a system user and a systemd unit"
[[ -n $BROKER && -n $DEVICE_ID && -n $CA && -n $CERT && -n $KEY ]] \
    || { usage >&2; die "--broker, --id, --ca, --cert and --key are required"; }
[[ $DEVICE_ID =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] \
    || die "invalid device id '$DEVICE_ID': 1-64 letters, digits, '_', '.', '-'"
for f in "$CA" "$CERT" "$KEY" ${TRUST_KEY:+"$TRUST_KEY"}; do
    [[ -r $f ]] || die "cannot read $f"
done
if command -v openssl >/dev/null; then
    # The broker takes the certificate's common name as the device's identity; a mismatch would
    # leave the agent connected but unable to publish anything.
    cn="$(openssl x509 -in "$CERT" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')"
    [[ $cn == "$DEVICE_ID" ]] || die "--cert is for '$cn', not '$DEVICE_ID'; issue one with \`edgetailor certs issue $DEVICE_ID\`"
    openssl verify -CAfile "$CA" "$CERT" >/dev/null || die "--cert is not signed by --ca"
fi

PYTHON="$(command -v python3 || true)"
[[ -n $PYTHON ]] || die "python3 not found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $("$PYTHON" -V 2>&1 | cut -d' ' -f2); edgetailor needs 3.11+ (Raspberry Pi OS Bookworm, Ubuntu 24.04)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "python3 venv missing: apt-get install python3-venv"

echo "==> system user $SERVICE_USER"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi

echo "==> virtualenv $PREFIX/venv"
install -d -m 0755 "$PREFIX"
[[ -x $PREFIX/venv/bin/python ]] || "$PYTHON" -m venv "$PREFIX/venv"
VPY="$PREFIX/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet --upgrade "$PACKAGE"
if ! "$VPY" -c 'import ai_edge_litert.interpreter' 2>/dev/null; then
    echo "==> ai-edge-litert unavailable on $(uname -m); trying tflite-runtime with numpy<2"
    # tflite-runtime wheels were built against numpy 1.x and crash on import with numpy 2.
    if ! "$VPY" -m pip install --quiet "tflite-runtime" "numpy<2"; then
        echo "warning: no TFLite runtime for this board; the agent will not announce tflite" >&2
    fi
fi

echo "==> configuration $CONF_DIR"
install -d -m 0755 "$CONF_DIR"
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR/tls"
install -m 0644 -o root -g root "$CA" "$CONF_DIR/tls/ca.crt"
install -m 0644 -o root -g root "$CERT" "$CONF_DIR/tls/device.crt"
install -m 0640 -o root -g "$SERVICE_USER" "$KEY" "$CONF_DIR/tls/device.key"
if [[ -n $TRUST_KEY ]]; then
    install -m 0644 -o root -g root "$TRUST_KEY" "$CONF_DIR/signing.pub"
    EXTRA_ARGS="--trust-key $CONF_DIR/signing.pub $EXTRA_ARGS"
else
    echo "warning: no --trust-key: the agent will accept unsigned manifests from anyone who can publish commands" >&2
fi
umask 022
cat >"$CONF_DIR/agent.env" <<ENV
# Read by edgetailor-agent.service; edit and \`systemctl restart edgetailor-agent\`.
EDGETAILOR_BROKER=$BROKER
EDGETAILOR_DEVICE_ID=$DEVICE_ID
EDGETAILOR_AGENT_ARGS=$EXTRA_ARGS
ENV

echo "==> systemd unit $UNIT_PATH"
unit_src="$HERE/systemd/edgetailor-agent.service"
[[ -r $unit_src ]] || die "$unit_src not found: run this script from the deploy/ directory it ships in"
sed "s|/opt/edgetailor|$PREFIX|g" "$unit_src" >"$UNIT_PATH.tmp"
if ! getent group video >/dev/null; then
    # systemd refuses to start a unit whose supplementary group does not exist.
    sed -i '/^SupplementaryGroups=video$/d' "$UNIT_PATH.tmp"
fi
chmod 0644 "$UNIT_PATH.tmp"
mv "$UNIT_PATH.tmp" "$UNIT_PATH"
systemctl daemon-reload

if [[ $START -eq 1 ]]; then
    systemctl enable --now edgetailor-agent.service
    systemctl --no-pager --lines=5 status edgetailor-agent.service || true
    echo "done: follow with \`journalctl -u edgetailor-agent -f\`"
else
    echo "done: start with \`systemctl enable --now edgetailor-agent\`"
fi
