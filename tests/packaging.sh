#!/usr/bin/env bash
# packaging.sh - the packaging test (scripts/test.sh runs it after the
# cargo tests, whose build it reuses): shell completions and man pages
# generated from the CLI's definitions, `cargo install --path cli`, and
# the Debian package (scripts/package.sh, cargo-deb) installed with dpkg,
# checked, and removed again. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
fail() { echo "packaging: FAILED: $*" >&2; exit 1; }
T=target/release/tapnet
[ -x "$T" ] || fail "$T missing: build it first"
tmp=$(mktemp -d /tmp/tn_pkg.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# completions for bash, zsh and fish, knowing the subcommands
"$T" completion bash >"$tmp/tapnet.bash"
grep -q "complete -F" "$tmp/tapnet.bash" && grep -q capture "$tmp/tapnet.bash" || fail "bash completion"
bash -c "source $tmp/tapnet.bash && complete -p tapnet" >/dev/null || fail "bash does not take the completion"
"$T" completion zsh | head -1 | grep -q "^#compdef tapnet" || fail "zsh completion"
"$T" completion fish | grep -q "complete -c tapnet .*events" || fail "fish completion"
# man pages, one per command, that man renders
"$T" man "$tmp/man"
for p in tapnet tapnet-network tapnet-capture tapnet-daemon tapnet-events; do
	[ -s "$tmp/man/$p.1" ] || fail "man page $p.1 missing"
done
man -l -P cat "$tmp/man/tapnet-capture.1" 2>/dev/null | grep -q SNAPLEN || fail "man tapnet-capture does not render"
echo "packaging: completions (bash, zsh, fish) and man pages ok"

# cargo install --path cli (the release build is reused)
cargo install --quiet --path cli --locked --offline --root "$tmp/inst" --target-dir target
v=$("$tmp/inst/bin/tapnet" --version)
[[ "$v" == "tapnet "* ]] || fail "installed tapnet --version: $v"
[ -x "$tmp/inst/bin/tapnet-cni" ] || fail "tapnet-cni not installed"
echo "packaging: cargo install --path cli ok ($v)"

# the Debian package
deb=$(scripts/package.sh | tail -1)
[ -f "$deb" ] || fail "no package: $deb"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/tapnet ./usr/bin/tapnet-cni ./usr/lib/cni/tapnet \
	./lib/systemd/system/tapnet.service ./usr/lib/systemd/user/tapnet.service \
	./usr/share/bash-completion/completions/tapnet ./usr/share/zsh/vendor-completions/_tapnet \
	./usr/share/fish/vendor_completions.d/tapnet.fish ./usr/share/man/man1/tapnet.1.gz ./usr/share/man/man1/tapnet-capture.1.gz \
	./usr/share/doc/tapnet/grafana/tapnet.json; do
	grep -q " $f\$" <<<"$contents" || fail "$f not in $deb"
done
systemd-analyze verify contrib/systemd/tapnet.service 2>/dev/null || true
if dpkg-query -W tapnet >/dev/null 2>&1; then fail "a tapnet package is already installed here"; fi
dpkg -i "$deb" >/dev/null
trap 'dpkg -r tapnet >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
[ "$(/usr/bin/tapnet --version)" = "$v" ] || fail "the installed tapnet is not this one"
/usr/bin/tapnet-cni </dev/null >/dev/null 2>&1 || true
man -w tapnet-network >/dev/null 2>&1 || fail "man tapnet-network not found after install"
[ -f /lib/systemd/system/tapnet.service ] || fail "unit not installed"
dpkg -r tapnet >/dev/null
[ ! -e /usr/bin/tapnet ] || fail "dpkg -r left /usr/bin/tapnet"
echo "packaging: $deb installed and removed ok"
