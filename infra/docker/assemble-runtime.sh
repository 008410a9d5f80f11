#!/bin/sh
# Copies what the three processes need at run time, from a built checkout (the current directory),
# into the folder given as $1: the root package.json, and for every workspace its package.json, dist/
# and its own node_modules/ when npm put one there, plus the database migrations.
# The Dockerfile copies the root node_modules/ itself, so that its workspace symlinks stay links.
# infra-checks runs this script against the local build and starts the processes from the result.
set -eu

out=${1:?usage: assemble-runtime.sh OUT_DIR}
mkdir -p "$out"
cp package.json "$out/"

# The same globs as "workspaces" in the root package.json.
for ws in apps/* packages/*; do
  [ -f "$ws/package.json" ] || continue
  mkdir -p "$out/$ws"
  cp "$ws/package.json" "$out/$ws/"
  if [ -d "$ws/dist" ]; then cp -R "$ws/dist" "$out/$ws/dist"; fi
  if [ -d "$ws/node_modules" ]; then cp -R "$ws/node_modules" "$out/$ws/node_modules"; fi
done

# drizzle's migrator reads packages/db/migrations next to dist/ at run time.
cp -R packages/db/migrations "$out/packages/db/migrations"

# The gateway serves the browser client from apps/gateway/public (next to dist/) at `/`.
cp -R apps/gateway/public "$out/apps/gateway/public"

# Fail the image build, not the pod, when an entry point or a run-time file is missing.
for f in apps/gateway/dist/main.js apps/worker/dist/main.js packages/db/dist/migrate-cli.js \
  packages/db/migrations/meta/_journal.json apps/gateway/public/index.html apps/gateway/public/app.js; do
  [ -f "$out/$f" ] || { echo "assemble-runtime: missing $f" >&2; exit 1; }
done
if ! ls "$out"/packages/bus/dist/lua/*.lua >/dev/null 2>&1; then
  echo "assemble-runtime: no Lua scripts in packages/bus/dist/lua" >&2
  exit 1
fi
