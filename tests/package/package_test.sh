#!/usr/bin/env bash
# package_test.sh SOURCE_DIR BUILD_DIR: scripts/package, dpkg -i, run, dpkg -r, dpkg --purge.
# Exit 0 passed, 1 failed (the failed check is printed), 77 skipped.
set -euo pipefail
src=$1 build=$2
pkgs=(tern-agent tern-bridge)

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: dpkg -i needs root"
  exit 77
fi
for p in "${pkgs[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed; then
    echo "SKIP: $p is installed on this machine; the test would remove it"
    exit 77
  fi
done

tmp=$(mktemp -d)
installed=0
cleanup() {
  [ "$installed" = 1 ] && dpkg --purge "${pkgs[@]}" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

TERN_BUILD_DIR=$build "$src/scripts/package" "$tmp/out" >"$tmp/debs"
version=$(sed -n 's/^project(tern VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
agent_deb=$(grep '/tern-agent_.*\.deb$' "$tmp/debs") || fail "no tern-agent .deb in: $(cat "$tmp/debs")"
bridge_deb=$(grep '/tern-bridge_.*\.deb$' "$tmp/debs") || fail "no tern-bridge .deb in: $(cat "$tmp/debs")"

# What each package holds, and what it depends on.
expect_files() {
  local deb=$1
  shift
  dpkg-deb -c "$deb" | awk '{print $6}' >"$tmp/contents"
  for f in "$@"; do
    grep -qx "$f" "$tmp/contents" || fail "$(basename "$deb") lacks $f; it holds: $(tr '\n' ' ' <"$tmp/contents")"
  done
}
expect_files "$agent_deb" ./usr/bin/tern-agent ./lib/systemd/system/tern-agent.service \
  ./etc/tern/agent.conf.example ./var/lib/tern/
expect_files "$bridge_deb" ./usr/bin/tern-bridge ./usr/bin/tern-artifact ./lib/systemd/system/tern-bridge.service \
  ./etc/tern/bridge.conf.example ./var/lib/tern-bridge/artifacts/ ./usr/share/tern/mosquitto/mosquitto.conf \
  ./usr/share/tern/mosquitto/mosquitto.acl ./usr/share/tern/mosquitto/mosquitto-operators.acl \
  ./usr/share/tern/dashboard/index.html ./usr/share/tern/dashboard/vendor/mqtt.min.js
dpkg-deb -f "$agent_deb" Depends | grep -q libubootenv || fail "tern-agent does not depend on libubootenv"
dpkg-deb -f "$bridge_deb" Depends | grep -q libsqlite3 || fail "tern-bridge does not depend on libsqlite3"
for deb in "$agent_deb" "$bridge_deb"; do
  dpkg-deb -I "$deb" conffiles | grep -q '^/etc/tern/' || fail "$(basename "$deb") marks no /etc/tern conffile"
done

# Install, and run what was installed (not the build tree's binaries).
dpkg -i "$agent_deb" "$bridge_deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log"; fail "dpkg -i"; }
installed=1
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${Status} ${Version}' "$p")" = "install ok installed $version" ] ||
    fail "$p is not installed at version $version: $(dpkg-query -W -f='${Status} ${Version}' "$p")"
done
out=$(/usr/bin/tern-agent --version) || fail "tern-agent --version exited with $?"
[ "$out" = "tern-agent $version" ] || fail "tern-agent --version printed '$out'"
out=$(/usr/bin/tern-bridge --help) || fail "tern-bridge --help exited with $?"
grep -q -- '--config FILE' <<<"$out" || fail "tern-bridge --help printed '$out'"
out=$(/usr/bin/tern-bridge --version) || fail "tern-bridge --version exited with $?"
[ "$out" = "tern-bridge $version" ] || fail "tern-bridge --version printed '$out'"
/usr/bin/tern-artifact --help >/dev/null 2>&1 || /usr/bin/tern-artifact 2>&1 | grep -qi usage ||
  fail "tern-artifact does not run"
# The shipped example configurations are valid JSON for the installed programs.
python3 -m json.tool /etc/tern/agent.conf.example >/dev/null || fail "agent.conf.example is not JSON"
python3 -m json.tool /etc/tern/bridge.conf.example >/dev/null || fail "bridge.conf.example is not JSON"
# The units as systemd reads them (no systemd runs here, but its verifier does).
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /lib/systemd/system/tern-agent.service /lib/systemd/system/tern-bridge.service \
    >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log"; fail "systemd-analyze verify of the units"; }
fi
cmp -s /usr/share/tern/mosquitto/mosquitto.conf "$src/mosquitto.conf" || fail "installed mosquitto.conf differs"

# Remove: every file goes, the conffiles stay until purge.
dpkg -L "${pkgs[@]}" | sort -u >"$tmp/files"
dpkg -r "${pkgs[@]}" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log"; fail "dpkg -r"; }
for f in /usr/bin/tern-agent /usr/bin/tern-bridge /usr/bin/tern-artifact /lib/systemd/system/tern-agent.service \
  /lib/systemd/system/tern-bridge.service /usr/share/tern/mosquitto/mosquitto.conf; do
  [ ! -e "$f" ] || fail "dpkg -r left $f"
done
[ -f /etc/tern/agent.conf.example ] || fail "dpkg -r removed the conffile /etc/tern/agent.conf.example"
dpkg --purge "${pkgs[@]}" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log"; fail "dpkg --purge"; }
installed=0
while read -r f; do
  case "$f" in
    /|/etc|/lib|/lib/systemd|/lib/systemd/system|/usr|/usr/bin|/usr/share|/usr/share/doc|/var|/var/lib) continue ;;
  esac
  [ ! -e "$f" ] || fail "dpkg --purge left $f"
done <"$tmp/files"
for p in "${pkgs[@]}"; do
  ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed || fail "$p still known to dpkg"
done
echo "packages: $(basename "$agent_deb") $(basename "$bridge_deb"): installed, ran, removed, purged"
