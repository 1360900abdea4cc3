# shellcheck shell=bash
# Sourced by scripts/test and bench/run: installs and starts the real peers the
# integration tests use, on loopback only, and exports BACKSTOP_TEST_* for them.
# Call peers_stop (by PID) when done; peers_start registers nothing global.

peers_install() {
	local need=()
	for tool in qemu-img qemu-nbd qemu-io nbdinfo nbdcopy nbdfuse fusermount3 tar setfacl getfattr; do
		command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
	done
	# Headless Chromium for the dashboard's browser tests (from the distribution;
	# no tool may download a browser of its own).
	[ -x /usr/bin/chromium ] || need+=(chromium)
	if ((${#need[@]})); then
		echo "peers: installing QEMU/NBD tools, tar, acl, attr, chromium (missing: ${need[*]})" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null
		apt-get install -y -qq --no-install-recommends qemu-utils nbdkit libnbd-bin nbdfuse fuse3 tar acl attr chromium >/dev/null
	fi
	# docker-compose.yml is validated with the compose CLI (no engine):
	# the docker plugin when present, else Debian's docker-compose.
	if ! { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } &&
		! command -v docker-compose >/dev/null 2>&1; then
		echo "peers: installing docker-compose (to validate docker-compose.yml)" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null
		apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
	fi
	VERSITYGW=$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")
	if [ ! -x "$VERSITYGW" ] || ! go version -m "$VERSITYGW" 2>/dev/null | grep -q 'github.com/versity/versitygw[[:space:]]*v1.8.0'; then
		echo "peers: building versitygw v1.8.0 (about a minute the first time)" >&2
		go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
		VERSITYGW="$(go env GOPATH)/bin/versitygw"
	fi
}

peers_postgres() {
	if ! pg_isready -q -h 127.0.0.1 -p 5432; then
		if ! command -v pg_ctlcluster >/dev/null 2>&1; then
			export DEBIAN_FRONTEND=noninteractive
			apt-get update -qq >/dev/null
			apt-get install -y -qq --no-install-recommends postgresql >/dev/null
		fi
		echo "peers: starting PostgreSQL" >&2
		pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
		for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
	fi
	export BACKSTOP_TEST_PG_DSN=${BACKSTOP_TEST_PG_DSN:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

peers_s3() {
	PEERS_DIR=$(mktemp -d /tmp/backstop-peers.XXXXXX)
	mkdir -p "$PEERS_DIR/s3"
	local port key secret
	port=$(free_port)
	key=backstoptest
	secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
	"$VERSITYGW" --port "127.0.0.1:$port" --access "$key" --secret "$secret" --quiet posix "$PEERS_DIR/s3" \
		>"$PEERS_DIR/versitygw.log" 2>&1 &
	VERSITYGW_PID=$!
	for _ in $(seq 100); do
		curl -s -o /dev/null "http://127.0.0.1:$port/" && break
		sleep 0.1
	done
	export BACKSTOP_TEST_S3_ENDPOINT="127.0.0.1:$port" BACKSTOP_TEST_S3_ACCESS_KEY="$key" \
		BACKSTOP_TEST_S3_SECRET_KEY="$secret" BACKSTOP_TEST_S3_DIR="$PEERS_DIR/s3"
}

peers_start() {
	peers_install
	peers_postgres
	peers_s3
}

peers_stop() {
	if [ -n "${VERSITYGW_PID:-}" ]; then
		kill "$VERSITYGW_PID" 2>/dev/null
		wait "$VERSITYGW_PID" 2>/dev/null
	fi
	[ -n "${PEERS_DIR:-}" ] && rm -rf "$PEERS_DIR"
	return 0
}
