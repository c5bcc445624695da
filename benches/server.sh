#!/usr/bin/env bash
# Load on `kiln serve` (docs/performance.md, "Server"):
#  1. GET /api/builds?limit=50 with 10,000 finished builds recorded, by wrk
#     (2 threads, 64 connections, 15 s), beside GET /api/openapi.json (a
#     static body served by the same server and middleware: the ceiling);
#  2. 200 builds submitted at once with --max-builds 2: all finish, none
#     lost, queue-to-start latency;
#  3. 50 clients following one running job's log live: every client sees
#     every line.
# Usage: benches/server.sh [KILN]   (default: target/release/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${1:-$PWD/target/release/kiln}
for tool in wrk sqlite3 curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk sqlite3 curl)" >&2; exit 1; }
done
[ -x "$KILN" ] || cargo build --release
WORK=$(mktemp -d)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
STORE=$WORK/store
start() { # start FLAGS...: a server on a free port; sets URL and SERVER
  "$KILN" --store "$STORE" serve --listen 127.0.0.1:0 "$@" 2> "$WORK/serve.log" &
  SERVER=$!
  for _ in $(seq 1 100); do
    URL=$(sed -n 's/^kiln serve: listening on //p' "$WORK/serve.log")
    [ -n "$URL" ] && return
    sleep 0.1
  done
  echo "the server did not start" >&2; cat "$WORK/serve.log" >&2; exit 1
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=; }
TOKEN=$("$KILN" --store "$STORE" serve token create bench --role admin)
AUTH="Authorization: Bearer $TOKEN"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "## 1. listing with 10,000 finished builds"
# Recorded builds as `kiln run` leaves them (rows only: the listing reads no more).
sqlite3 "$STORE/index.sqlite" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
  INSERT INTO builds(owner, status, started, finished, pinned, manifest)
  SELECT 'bench/p' || (i % 20), CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'passed' END,
         1700000000000 + i * 1000, 1700000000500 + i * 1000, 0, '/p/build.kiln' FROM n;"
start --max-builds 2
curl -fsS -H "$AUTH" "$URL/api/builds?limit=50" | head -c 200; echo
for path in "/api/openapi.json" "/api/builds?limit=50"; do
  echo "### GET $path"
  wrk -t2 -c64 -d15s --latency -H "$AUTH" "$URL$path" | grep -E "Requests/sec|Latency|50%|99%|requests in|Non-2xx"
done
stop

echo "## 2. 200 builds submitted at once, --max-builds 2"
mkdir -p "$WORK/p"
cat > "$WORK/p/build.kiln" <<'KILN'
{ n ? "0" }: {
  driver = { type = "container"; image = "host"; };
  env = { N = n; };
  stages = [ "one" ];
  jobs = { hello = { stage = "one"; commands = [ "echo build $N" ]; }; };
}
KILN
tar -C "$WORK/p" -cf "$WORK/p.tar" build.kiln
start --max-builds 2
started=$(date +%s.%N)
for i in $(seq 1 200); do
  curl -fsS -o /dev/null -X POST -H "$AUTH" --data-binary @"$WORK/p.tar" "$URL/api/builds?arg=n=$i" &
done
wait $(jobs -p | grep -v "^$SERVER\$") 2>/dev/null || true
submitted=$(date +%s.%N)
while [ "$(curl -fsS -H "$AUTH" "$URL/metrics" | sed -n 's/^kiln_queue_depth //p')" != 0 ] \
   || [ "$(curl -fsS -H "$AUTH" "$URL/metrics" | sed -n 's/^kiln_builds_running //p')" != 0 ]; do
  sleep 0.5
done
finished=$(date +%s.%N)
stop
sqlite3 "$STORE/index.sqlite" "SELECT 'builds: ' || COUNT(*) || ', passed: ' || SUM(status = 'passed') FROM builds WHERE id > 10000;"
python3 - "$STORE/index.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
waits = sorted(r[0] for r in db.execute(
    "SELECT b.started - s.queued FROM builds b JOIN submissions s ON s.build = b.id WHERE b.id > 10000"))
pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))] / 1000
print(f"queue-to-start over {len(waits)} builds: median {pick(0.5):.1f} s, p99 {pick(0.99):.1f} s, max {waits[-1] / 1000:.1f} s")
PY
echo "submit all: $(echo "$submitted - $started" | bc) s; all finished after $(echo "$finished - $started" | bc) s"

echo "## 3. 50 clients following one job's log"
cat > "$WORK/p/build.kiln" <<'KILN'
{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { talk = { stage = "one"; commands = [ "sleep 1; for i in $(seq 1 2000); do echo line $i; done; sleep 1" ]; }; };
}
KILN
tar -C "$WORK/p" -cf "$WORK/p.tar" build.kiln
start --max-builds 2
build=$(curl -fsS -X POST -H "$AUTH" --data-binary @"$WORK/p.tar" "$URL/api/builds" | sed 's/.*"build":\([0-9]*\).*/\1/')
until curl -fsS -H "$AUTH" "$URL/api/builds/$build" | grep -q '"status":"running"'; do sleep 0.1; done
for c in $(seq 1 50); do
  curl -fsSN -H "$AUTH" "$URL/api/builds/$build/log/talk?follow=true" > "$WORK/follow-$c.txt" &
done
wait $(jobs -p | grep -v "^$SERVER\$") 2>/dev/null || true
complete=0
for c in $(seq 1 50); do
  [ "$(grep -c '^data: line ' "$WORK/follow-$c.txt")" = 2000 ] && complete=$((complete + 1))
done
echo "clients that saw all 2,000 lines: $complete of 50"
stop
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
