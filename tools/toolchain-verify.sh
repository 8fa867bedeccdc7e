#!/usr/bin/env bash
# End-to-end check of the toolchain of tools/toolchain.sh (the CLI built from the Go module proxy +
# our language host tools/langhost/): in a temp dir, a tiny Pulumi Python project on a file://
# backend with a dynamic resource (its provider writes a file) and a secret config value, through
#   stack init, config set --secret, preview, up, up again (must be a no-op), stack history, destroy;
# then a program that raises must make `pulumi up` fail and show the exception's message.
#
#   tools/toolchain-verify.sh            uses `tools/toolchain.sh env` (does not build)
#   TOOLCHAIN_VERIFY_KEEP=1 ...          keep the temp dir
#   APPSTACK_VENV=/path/to/venv ...      virtualenv of the test project (default: <repo>/.venv;
#                                        it needs the pinned `pulumi` SDK)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${APPSTACK_VENV:-$REPO_ROOT/.venv}"

say() { printf 'toolchain-verify: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

eval "$("$SCRIPT_DIR/toolchain.sh" env)"
PIN="$("$SCRIPT_DIR/toolchain.sh" versions | awk '$1 == "pulumi" { print $2 }')"

[[ -x "$VENV/bin/python" ]] || fail "no virtualenv at $VENV (make venv, or set APPSTACK_VENV)"
SDK="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pulumi"))' 2>/dev/null || true)"
[[ "$SDK" == "$PIN" ]] || fail "$VENV has pulumi SDK '${SDK:-none}', expected $PIN (the pin in requirements.txt)"

WORK="$(mktemp -d /tmp/appstack-toolchain-verify.XXXXXX)"
[[ "${TOOLCHAIN_VERIFY_KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
export PULUMI_HOME="$WORK/pulumi-home"
export PULUMI_BACKEND_URL="file://$WORK/backend"
export PULUMI_CONFIG_PASSPHRASE=test
unset PULUMI_CONFIG_PASSPHRASE_FILE
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
mkdir -p "$WORK/backend" "$WORK/proj" "$WORK/fail" "$WORK/out"

for b in pulumi pulumi-language-python-exec pulumi-resource-pulumi-python; do
  command -v "$b" >/dev/null || fail "$b not on PATH (run tools/toolchain.sh ensure)"
done
LH="$(dirname "$(readlink -f "$(command -v pulumi)")")/pulumi-language-python"
[[ -x "$LH" ]] || fail "no language host next to pulumi ($LH; run tools/toolchain.sh ensure)"
say "work dir $WORK"
say "pulumi $(pulumi version) at $(command -v pulumi); language host $LH -> $(readlink -f "$LH")"
say "project virtualenv $VENV (pulumi SDK $SDK)"

project() { # project DIR NAME
  cat >"$1/Pulumi.yaml" <<EOF
name: $2
runtime:
  name: python
  options:
    virtualenv: $VENV
EOF
}

project "$WORK/proj" toolchain-verify
cat >"$WORK/proj/__main__.py" <<'EOF'
import os

import pulumi
import pulumi.dynamic


class FileProvider(pulumi.dynamic.ResourceProvider):
    def create(self, props):
        with open(props["path"], "w", encoding="utf-8") as f:
            f.write(props["content"])
        return pulumi.dynamic.CreateResult(id_=props["path"], outs=dict(props))

    def delete(self, id, props):
        if os.path.exists(id):
            os.remove(id)


class File(pulumi.dynamic.Resource):
    path: pulumi.Output[str]
    content: pulumi.Output[str]

    def __init__(self, name, path, content, opts=None):
        super().__init__(FileProvider(), name, {"path": path, "content": content}, opts)


cfg = pulumi.Config()
tok = cfg.require_secret("tok")
f = File("hello", os.environ["VERIFY_OUT"] + "/hello.txt", "hello from a dynamic provider\n")
print("program: running, stack", pulumi.get_stack())
pulumi.export("path", f.path)
pulumi.export("tok", tok)
EOF
export VERIFY_OUT="$WORK/out"

project "$WORK/fail" toolchain-verify-fail
cat >"$WORK/fail/__main__.py" <<'EOF'
import pulumi

raise RuntimeError("verify-boom: this program fails on purpose")
EOF

LOG="$WORK/log"
run() { # run CMD... : show it, time it, keep its output in $LOG, fail on non-zero exit
  local t0 rc=0
  say "\$ $*"
  t0=$(date +%s.%N)
  "$@" >"$LOG" 2>&1 || rc=$?
  sed 's/^/    /' "$LOG" >&2
  say "  -> exit $rc, $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s"
  [[ $rc == 0 ]] || fail "$* exited $rc"
  ! grep -q 'from \$PATH' "$LOG" || fail "the engine warned about a plugin taken from \$PATH"
}

cd "$WORK/proj"
run pulumi stack init dev
run pulumi config set --secret tok abc
run pulumi preview
grep -q 'program: running' "$LOG" || fail "the program's stdout did not reach the engine output"
[[ ! -e "$WORK/out/hello.txt" ]] || fail "preview created the file"
run pulumi up --yes --skip-preview
[[ "$(cat "$WORK/out/hello.txt" 2>/dev/null)" == "hello from a dynamic provider" ]] || fail "the dynamic provider did not write $WORK/out/hello.txt"
run pulumi up --yes --expect-no-changes
run pulumi stack output --json --show-secrets
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); assert o["tok"] == "abc", o' "$LOG" || fail "secret output tok != abc"
run pulumi stack output tok
grep -q 'secret' "$LOG" || fail "tok is not shown as a secret"
run pulumi stack history --json
python3 -c '
import json, sys
h = json.load(open(sys.argv[1]))
assert len(h) >= 2 and all(u.get("result") == "succeeded" for u in h), h
print("history:", [(u.get("kind"), u.get("result"), u.get("resourceChanges")) for u in h])' "$LOG" >&2 || fail "unexpected stack history"
run pulumi destroy --yes
[[ ! -e "$WORK/out/hello.txt" ]] || fail "destroy did not delete the file"
run pulumi stack rm --yes dev

cd "$WORK/fail"
run pulumi stack init dev
say "\$ pulumi up --yes --skip-preview   (must fail)"
rc=0; pulumi up --yes --skip-preview >"$LOG" 2>&1 || rc=$?
sed 's/^/    /' "$LOG" >&2
say "  -> exit $rc"
[[ $rc != 0 ]] || fail "pulumi up of a raising program succeeded"
grep -q 'verify-boom: this program fails on purpose' "$LOG" || fail "the exception's message is not in the output"
say "OK"
