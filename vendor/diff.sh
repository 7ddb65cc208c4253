#!/usr/bin/env bash
# Writes vendor/patches/<crate>.diff: this copy against the crates.io release it was
# taken from (read from cargo's registry cache, which any build of this workspace fills).
set -euo pipefail
cd "$(dirname "$0")"
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
for crate in pingora-core pingora-proxy; do
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$crate/Cargo.toml" | head -1)
    upstream="$registry/$crate-$version"
    [ -d "$upstream" ] || { echo "no $upstream; run cargo fetch first" >&2; exit 1; }
    (cd "$(dirname "$upstream")" && diff -ruN -x .cargo_vcs_info.json -x .cargo-ok \
        "$(basename "$upstream")" "$OLDPWD/$crate" || true) |
        sed -E "s#$OLDPWD/##; s/^(---|\\+\\+\\+) ([^\t]+)\t.*/\\1 \\2/" > "patches/$crate.diff"
    echo "patches/$crate.diff: $(grep -c '^[-+][^-+]' "patches/$crate.diff") changed lines"
done
