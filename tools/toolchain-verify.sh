#!/usr/bin/env bash
# End-to-end check of the toolchain built by tools/toolchain.sh: in a temp dir, run a tiny Pulumi
# Python project on a file:// backend (dynamic resource, command.local.Command, docker.Provider,
# kubernetes.Provider rendering a ConfigMap to a directory), then show `pulumi stack history`.
#
#   tools/toolchain-verify.sh            uses `tools/toolchain.sh env` (does not build)
#   TOOLCHAIN_VERIFY_KEEP=1 ...          keep the temp dir
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${APPSTACK_VENV:-$REPO_ROOT/.venv}"

eval "$("$SCRIPT_DIR/toolchain.sh" env)"
export PULUMI_IGNORE_AMBIENT_PLUGINS="${PULUMI_IGNORE_AMBIENT_PLUGINS:-false}"

WORK="$(mktemp -d /tmp/appstack-toolchain-verify.XXXXXX)"
[[ "${TOOLCHAIN_VERIFY_KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
export PULUMI_HOME="$WORK/pulumi-home"
export PULUMI_BACKEND_URL="file://$WORK/backend"
export PULUMI_CONFIG_PASSPHRASE=test
mkdir -p "$WORK/backend" "$WORK/proj" "$WORK/rendered"

cat >"$WORK/proj/Pulumi.yaml" <<EOF
name: toolchain-verify
runtime:
  name: python
  options:
    virtualenv: $VENV
EOF

cat >"$WORK/proj/__main__.py" <<EOF
import pulumi
import pulumi.dynamic
import pulumi_command
import pulumi_docker
import pulumi_kubernetes as k8s


class EchoProvider(pulumi.dynamic.ResourceProvider):
    def create(self, props):
        return pulumi.dynamic.CreateResult(id_="echo-1", outs={"value": props["value"]})


class Echo(pulumi.dynamic.Resource):
    value: pulumi.Output[str]

    def __init__(self, name, value, opts=None):
        super().__init__(EchoProvider(), name, {"value": value}, opts)


echo = Echo("echo", "hello")
cmd = pulumi_command.local.Command("hi", create="echo hi")
dock = pulumi_docker.Provider("docker", host="unix:///var/run/docker.sock")
k8sp = k8s.Provider("render", render_yaml_to_directory="$WORK/rendered")
cm = k8s.core.v1.ConfigMap(
    "cm",
    metadata={"name": "toolchain-verify"},
    data={"hello": "world"},
    opts=pulumi.ResourceOptions(provider=k8sp),
)

pulumi.export("echo", echo.value)
pulumi.export("stdout", cmd.stdout)
EOF

echo "toolchain-verify: work dir $WORK" >&2
echo "toolchain-verify: pulumi = $(command -v pulumi || echo MISSING)" >&2
for b in pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python \
         pulumi-resource-docker pulumi-resource-command pulumi-resource-kubernetes; do
  command -v "$b" >/dev/null || { echo "toolchain-verify: $b not on PATH (run tools/toolchain.sh ensure)" >&2; exit 1; }
done
pulumi version
cd "$WORK/proj"
pulumi stack init dev
pulumi up --yes --skip-preview
pulumi stack output --json
pulumi stack history --json
echo "toolchain-verify: rendered manifests:" >&2
find "$WORK/rendered" -type f >&2
grep -rq "toolchain-verify" "$WORK/rendered" || { echo "toolchain-verify: ConfigMap not rendered" >&2; exit 1; }
echo "toolchain-verify: OK" >&2
