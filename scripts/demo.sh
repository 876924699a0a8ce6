#!/usr/bin/env bash
# The `make run` demo: a sandbox on the local provider, driven through the `local` wasm plugin:
# create, streamed exec, a file round trip, a background web server reached through `port`,
# destroy. Usage: scripts/demo.sh [path/to/sandbox-host]
set -euo pipefail
sh_bin=${1:-./target/release/sandbox-host}
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m'; off=$'\033[0m'; else bold=; off=; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
run() { printf '$ sandbox-host'; printf ' %q' "$@"; printf '\n'; "$sh_bin" "$@"; }

step "Provider plugins"
run plugins

step "Create a sandbox on the local provider (bubblewrap, its own uid)"
id=$("$sh_bin" create --provider local --label demo=make-run)
echo "sandbox id: $id"
cleanup() { "$sh_bin" rm "$id" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
tmp=$(mktemp -d)
trap cleanup EXIT

step "Streamed exec: output arrives while the command runs"
run exec "$id" -- 'for i in 1 2 3; do echo "tick $i at $(date +%T.%N | cut -c1-12)"; sleep 0.5; done; echo "whoami: $(id -u), cwd: $(pwd)"'

step "File round trip"
echo "hello from the host, $(date)" > "$tmp/hello.txt"
run cp "$tmp/hello.txt" "$id:hello.txt"
run exec "$id" -- sh -c 'wc -c hello.txt && tr a-z A-Z < hello.txt > shout.txt'
run cp "$id:shout.txt" "$tmp/shout.txt"
cat "$tmp/shout.txt"

step "A background web server, reached through its port URL"
port=$((20000 + RANDOM % 20000))
run exec --detach "$id" -- python3 -m http.server "$port" --bind 127.0.0.1
url=$("$sh_bin" port "$id" "$port")
echo "port $port -> $url"
python3 - "$url" <<'PY'
import sys, time, urllib.request
for attempt in range(50):
    try:
        body = urllib.request.urlopen(sys.argv[1] + "/hello.txt", timeout=2).read().decode()
        print("GET /hello.txt ->", body.strip())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the server did not answer")
PY
run ps "$id"

step "Destroy"
run rm "$id"
trap - EXIT
rm -rf "$tmp"
run ls
echo
echo "Done. More: sandbox-host help"
