#!/usr/bin/env bash
# Deploys a stack with the real engine: `tools/up.sh [STACK]` (default dev). Run through tools/env.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stack=${1:-dev}
cd "$root"
pulumi stack select --create "$stack" --non-interactive >/dev/null
if [[ "$stack" == dev ]]; then
  # Ollama is outside the stack; in dev a stand-in runs on the network Pulumi.dev.yaml names.
  "$root/tools/dev-ollama.sh" start
fi
pulumi up --stack "$stack" --yes --skip-preview --non-interactive
echo "public entry: $(pulumi stack output publicUrl --stack "$stack")"
