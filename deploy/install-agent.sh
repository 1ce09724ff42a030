#!/usr/bin/env bash
# Install the edgetailor device agent on a board: Raspberry Pi OS 64-bit (Bookworm), Ubuntu
# 22.04/24.04 and Jetson Linux (JetPack 6), or any Debian-like system with systemd.
#
#   sudo deploy/install-agent.sh --broker mqtts://broker.lan:8883 --id pi-kitchen-01 \
#        --ca ca.crt --cert pi-kitchen-01.crt --key pi-kitchen-01.key --trust-key signing.pub
#
# Creates the "edgetailor" system user, a virtualenv in /opt/edgetailor/venv with the agent
# ('edgetailor[device]', or '[device-tflite]' -- tflite-runtime with numpy<2 -- where ai-edge-litert
# has no working wheel), copies the TLS files to /etc/edgetailor/tls, writes
# /etc/edgetailor/agent.toml, runs `edgetailor-agent --check`, installs the hardened systemd unit
# and starts it. Run again to upgrade or change settings; deploy/uninstall-agent.sh removes it.
# Certificates come from the host: `edgetailor certs issue DEVICE_ID` (see deploy/mosquitto/README.md).
set -euo pipefail

PREFIX=/opt/edgetailor
CONF_DIR=/etc/edgetailor
DATA_DIR=/var/lib/edgetailor-agent
UNIT_PATH=/etc/systemd/system/edgetailor-agent.service
SERVICE_USER=edgetailor
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGE="" EXTRA=auto
BROKER="" DEVICE_ID="" CA="" CERT="" KEY="" TRUST_KEY="" THREADS="" APP_USER="" START=1
SERVE="unix:/run/edgetailor/agent.sock"
TAGS=() SETS=()

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'USAGE'

Options:
  --broker URL        mqtts://HOST:8883 (required)
  --id DEVICE_ID      must equal the common name of --cert (required)
  --ca FILE           the CA certificate (ca.crt) (required)
  --cert FILE         this device's certificate (required)
  --key FILE          this device's private key (required)
  --trust-key FILE    the host's manifest-signing public key (signing.pub); strongly advised
  --threads N         runtime threads when a job does not say
  --tag KEY=VALUE     announced to the host (repeatable), e.g. --tag site=lab
  --serve ADDRESS     local inference endpoint (default unix:/run/edgetailor/agent.sock; "none")
  --app-user USER     add USER to the edgetailor group: it may use the endpoint and read the model
  --set KEY=VALUE     any other agent.toml setting, TOML syntax (repeatable): --set 'max_store_mb = 2048'
  --package SPEC      what pip installs (default: this checkout when run from one, else edgetailor)
  --extra NAME        device, device-tflite or auto (default: auto)
  --no-start          install everything but do not enable or start the service
USAGE
}

die() { echo "install-agent: $*" >&2; exit 1; }
toml_string() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --broker) BROKER="$2"; shift 2 ;;
        --id) DEVICE_ID="$2"; shift 2 ;;
        --ca) CA="$2"; shift 2 ;;
        --cert) CERT="$2"; shift 2 ;;
        --key) KEY="$2"; shift 2 ;;
        --trust-key) TRUST_KEY="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --tag) TAGS+=("$2"); shift 2 ;;
        --serve) SERVE="$2"; shift 2 ;;
        --app-user) APP_USER="$2"; shift 2 ;;
        --set) SETS+=("$2"); shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --extra) EXTRA="$2"; shift 2 ;;
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
[[ $EXTRA == auto || $EXTRA == device || $EXTRA == device-tflite ]] \
    || die "--extra must be device, device-tflite or auto"
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive number"
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
command -v systemctl >/dev/null || die "systemd not found: run the agent by hand or in docker (see README)"

# Python 3.11 or newer. Raspberry Pi OS Bookworm and Ubuntu 24.04 have it as python3; Ubuntu 22.04
# (JetPack 6) ships 3.10 and gets python3.11 from the distribution's universe archive.
find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}
PYTHON="$(find_python || true)"
if [[ -z $PYTHON ]] && command -v apt-get >/dev/null; then
    echo "==> python3 is older than 3.11; installing python3.11 with apt"
    apt-get update -qq
    apt-get install -y -qq python3.11 python3.11-venv || die "cannot install python3.11; install Python 3.11+ and run again"
    PYTHON="$(find_python || true)"
fi
[[ -n $PYTHON ]] || die "edgetailor needs Python 3.11+ (Raspberry Pi OS Bookworm, Ubuntu 24.04, or python3.11 on 22.04)"
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    command -v apt-get >/dev/null && apt-get install -y -qq "$(basename "$PYTHON")-venv" >/dev/null || true
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "venv missing: apt-get install $(basename "$PYTHON")-venv"
fi

echo "==> system user $SERVICE_USER"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi
if [[ -n $APP_USER ]]; then
    id -u "$APP_USER" >/dev/null 2>&1 || die "--app-user $APP_USER does not exist"
    usermod -a -G "$SERVICE_USER" "$APP_USER"
fi

if [[ -z $PACKAGE ]]; then
    if [[ -f $HERE/../pyproject.toml ]]; then PACKAGE="$(cd "$HERE/.." && pwd)"; else PACKAGE=edgetailor; fi
fi
spec() { echo "${PACKAGE}[$1]"; }  # a directory, a wheel path or a PyPI name

echo "==> virtualenv $PREFIX/venv ($("$PYTHON" -V 2>&1))"
install -d -m 0755 "$PREFIX"
[[ -x $PREFIX/venv/bin/python ]] || "$PYTHON" -m venv "$PREFIX/venv"
VPY="$PREFIX/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
if [[ $EXTRA == auto || $EXTRA == device ]]; then
    "$VPY" -m pip install --quiet --upgrade "$(spec device)"
fi
if [[ $EXTRA == device-tflite ]] || { [[ $EXTRA == auto ]] && ! "$VPY" -c 'import ai_edge_litert.interpreter' 2>/dev/null; }; then
    echo "==> ai-edge-litert does not run on $(uname -m) here; installing tflite-runtime with numpy<2"
    "$VPY" -m pip uninstall --quiet --yes ai-edge-litert >/dev/null 2>&1 || true
    "$VPY" -m pip install --quiet --upgrade "$(spec device-tflite)" \
        || echo "warning: no TFLite runtime for this board; the agent will not announce tflite" >&2
fi

echo "==> configuration $CONF_DIR/agent.toml"
install -d -m 0755 "$CONF_DIR"
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR/tls"
install -m 0644 -o root -g root "$CA" "$CONF_DIR/tls/ca.crt"
install -m 0644 -o root -g root "$CERT" "$CONF_DIR/tls/device.crt"
install -m 0640 -o root -g "$SERVICE_USER" "$KEY" "$CONF_DIR/tls/device.key"
if [[ -n $TRUST_KEY ]]; then
    install -m 0644 -o root -g root "$TRUST_KEY" "$CONF_DIR/signing.pub"
else
    echo "warning: no --trust-key: the agent will accept unsigned manifests from anyone who can publish commands" >&2
fi
tmp="$(mktemp "$CONF_DIR/.agent.toml.XXXXXX")"
{
    echo "# edgetailor-agent settings (README: \"Agent configuration\"). Edit, then"
    echo "# \`edgetailor-agent --check --config $CONF_DIR/agent.toml\` and \`systemctl restart edgetailor-agent\`."
    echo "broker = $(toml_string "$BROKER")"
    echo "id = $(toml_string "$DEVICE_ID")"
    echo "# data_dir and tls_* are also given by the systemd unit, whose flags win."
    echo "data_dir = $(toml_string "$DATA_DIR")"
    echo "tls_ca = \"$CONF_DIR/tls/ca.crt\""
    echo "tls_cert = \"$CONF_DIR/tls/device.crt\""
    echo "tls_key = \"$CONF_DIR/tls/device.key\""
    [[ -n $TRUST_KEY ]] && echo "trust_key = \"$CONF_DIR/signing.pub\""
    [[ $SERVE != none ]] && echo "serve = $(toml_string "$SERVE")"
    [[ -n $THREADS ]] && echo "threads = $THREADS"
    for line in "${SETS[@]}"; do echo "$line"; done
    if [[ ${#TAGS[@]} -gt 0 ]]; then
        echo "[tags]"
        for tag in "${TAGS[@]}"; do
            [[ $tag == *=* ]] || die "--tag $tag must be KEY=VALUE"
            echo "$(toml_string "${tag%%=*}") = $(toml_string "${tag#*=}")"
        done
    fi
} >"$tmp"
chown root:"$SERVICE_USER" "$tmp"
chmod 0640 "$tmp"
mv "$tmp" "$CONF_DIR/agent.toml"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /run/edgetailor

echo "==> edgetailor-agent --check"
if ! runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/edgetailor-agent" --check --config "$CONF_DIR/agent.toml"; then
    echo "warning: the check found problems (above); the agent starts anyway and keeps retrying the broker" >&2
fi

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
    systemctl enable edgetailor-agent.service
    systemctl restart edgetailor-agent.service
    systemctl --no-pager --lines=5 status edgetailor-agent.service || true
    echo "done: follow with \`journalctl -u edgetailor-agent -f\`; see it with \`edgetailor devices\` on the host"
else
    echo "done: start with \`systemctl enable --now edgetailor-agent\`"
fi
