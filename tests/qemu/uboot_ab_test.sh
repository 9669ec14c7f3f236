#!/usr/bin/env bash
# uboot_ab_test.sh SOURCE_DIR BUILD_DIR: Debian's real U-Boot (u-boot-qemu, qemu-system-aarch64 with
# TCG) decides the boot of an A/B disk image that tern-agent, run on this host, updates.
#
#   disk.img  GPT: 1 "boot" (ext2: boot.scr made from tests/qemu/boot.cmd), 2 "rootfs-a", 3 "rootfs-b"
#             (ext2: /boot/Image, Debian's arm64 kernel, and /boot/initrd.img, a busybox initramfs
#             that prints which partition it is and the kernel command line, then powers off);
#             the redundant U-Boot environment at 0x40000 and 0x60000, 16 KiB each, before the first
#             partition, which fw_env.config names for libubootenv (the agent, fw_printenv).
#   boot      qemu-system-aarch64 -M virt with u-boot.bin as firmware and the disk as virtio; the
#             command line the guest printed becomes the agent's KernelCmdline file.
#
# Cases, one after the other on the same disk:
#   factory     A boots.
#   no commit   tern-agent installs B -> U-Boot boots B (bootcount 1); B never commits -> the next
#               boot passes bootlimit=1: altbootcmd -> A; `tern-agent resume` reports the rollback.
#   commit      install B again -> B boots; `tern-agent resume` commits -> B boots again and stays.
#   torn commit the copy of the environment the commit wrote is corrupted -> both sides read the
#               older copy (B still on trial) -> U-Boot goes back to A.
# After each boot the environment U-Boot left is compared with what the device simulator
# (tests/support/device_sim) predicts from the same starting environment.
# Exit 0 passed, 1 failed (the failed check and the serial log are printed).
set -euo pipefail
src=$1 build=$2
here=$src/tests/qemu
uboot=/usr/lib/u-boot/qemu_arm64/u-boot.bin
agent=$build/agent/tern-agent
tern_artifact=$build/artifacts/tern-artifact
sim=$build/tests/support/tern-device-sim

tmp=$(mktemp -d)
keep=${TERN_KEEP_TMP:-0}
cleanup() { [ "$keep" = 1 ] && echo "kept $tmp" || rm -rf "$tmp"; }
trap cleanup EXIT
fail() {
  echo "FAILED: $*" >&2
  [ -f "$tmp/serial.log" ] && { echo "--- serial log of the last boot:" >&2; tail -40 "$tmp/serial.log" >&2; }
  exit 1
}
for tool in qemu-system-aarch64 mkimage mkenvimage mke2fs sfdisk cpio fw_printenv; do
  command -v $tool >/dev/null || fail "$tool is missing (scripts/setup installs it)"
done
[ -f "$uboot" ] || fail "$uboot is missing (u-boot-qemu; scripts/setup installs it)"
for b in "$agent" "$tern_artifact" "$sim"; do [ -x "$b" ] || fail "$b is not built"; done

assets=$build/qemu-assets
"$here/fetch-assets" "$assets"

# --- the disk ------------------------------------------------------------------------------------
rootfs_mib=48
# rootfs_image SLOT OUT: an ext2 image whose initramfs reports SLOT.
rootfs_image() {
  local slot=$1 out=$2 d=$tmp/rootfs-$1
  mkdir -p "$d/boot" "$d/initramfs/bin" "$d/initramfs/proc"
  cp "$assets/busybox" "$d/initramfs/bin/busybox"
  cat >"$d/initramfs/init" <<INIT
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "TERN-ROOTFS: $slot"
echo "TERN-CMDLINE: \$(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
INIT
  chmod +x "$d/initramfs/init"
  (cd "$d/initramfs" && find . | cpio -o -H newc --quiet | gzip -1 >"$d/boot/initrd.img")
  cp "$assets/Image" "$d/boot/Image"
  echo "rootfs $slot" >"$d/slot"
  rm -rf "$d/initramfs"
  mke2fs -q -F -t ext2 -L "rootfs-$slot" -d "$d" "$out" "${rootfs_mib}M" >/dev/null || fail "mke2fs for $slot"
}
rootfs_image A "$tmp/rootfs-a.ext2"
rootfs_image B "$tmp/rootfs-b.ext2"

mkdir -p "$tmp/bootfs"
mkimage -q -A arm64 -O linux -T script -C none -n "Tern A/B boot" -d "$here/boot.cmd" "$tmp/bootfs/boot.scr" \
  >/dev/null || fail "mkimage of boot.cmd"
mke2fs -q -F -t ext2 -L boot -d "$tmp/bootfs" "$tmp/boot.ext2" 4M >/dev/null || fail "mke2fs for boot"

disk=$tmp/disk.img
truncate -s $((1 + 4 + 2 * rootfs_mib + 1))M "$disk"
linux=0FC63DAF-8483-4772-8E79-3D69D8477DE4
sfdisk --quiet "$disk" <<PARTS || fail "sfdisk"
label: gpt
start=1MiB, size=4MiB, type=$linux, name="boot"
size=${rootfs_mib}MiB, type=$linux, name="rootfs-a"
size=${rootfs_mib}MiB, type=$linux, name="rootfs-b"
PARTS
dd if="$tmp/boot.ext2" of="$disk" bs=1M seek=1 conv=notrunc status=none
dd if="$tmp/rootfs-a.ext2" of="$disk" bs=1M seek=5 conv=notrunc status=none

# Mender's variables, in both copies of the environment (mkenvimage -r: the redundant layout).
printf '%s\n' bootlimit=1 bootcount=0 upgrade_available=0 mender_boot_part=2 mender_boot_part_hex=2 \
  >"$tmp/env.txt"
mkenvimage -r -s 0x4000 -o "$tmp/env.bin" "$tmp/env.txt"
dd if="$tmp/env.bin" of="$disk" bs=1 seek=$((0x40000)) conv=notrunc status=none
dd if="$tmp/env.bin" of="$disk" bs=1 seek=$((0x60000)) conv=notrunc status=none
printf '%s 0x40000 0x4000\n%s 0x60000 0x4000\n' "$disk" "$disk" >"$tmp/fw_env.config"

envvar() { fw_printenv -c "$tmp/fw_env.config" -n "$1" 2>/dev/null || true; }

# --- the agent -----------------------------------------------------------------------------------
cat >"$tmp/agent.conf" <<CONF
{
  "DeviceType": "qemu-arm64",
  "ArtifactName": "factory",
  "DataDir": "$tmp/data",
  "Disk": "$disk",
  "RootfsPartA": "2",
  "RootfsPartB": "3",
  "RootDeviceA": "/dev/vda2",
  "RootDeviceB": "/dev/vda3",
  "KernelCmdline": "$tmp/cmdline",
  "Mountinfo": "$tmp/no-mountinfo",
  "FwEnvConfig": "$tmp/fw_env.config",
  "RebootCommand": ""
}
CONF
run_agent() { "$agent" --config "$tmp/agent.conf" "$@"; }

# --- booting -------------------------------------------------------------------------------------
# What the device simulator predicts for a power-on from the environment on the disk now.
sim_predict() {
  local d=$tmp/sim
  rm -rf "$d"
  "$sim" create "$d" --rootfs-mib 1 --data-mib 1 >/dev/null || fail "tern-device-sim create"
  local args=()
  for v in bootlimit bootcount upgrade_available mender_boot_part mender_boot_part_hex; do
    args+=("$v=$(envvar $v)")
  done
  "$sim" setenv "$d" "${args[@]}" >/dev/null || fail "tern-device-sim setenv ${args[*]}"
  "$sim" boot "$d" >"$tmp/sim.out" 2>&1 || fail "tern-device-sim boot: $(cat "$tmp/sim.out")"
  "$sim" env "$d" >"$tmp/sim.env" || fail "tern-device-sim env"
}

boots=0
# boot EXPECTED_SLOT: power-on under QEMU; checks the slot the guest reported and that the
# environment U-Boot left matches the simulator's; writes the guest's command line for the agent.
boot() {
  local expect=$1
  sim_predict
  boots=$((boots + 1))
  # The guest powers off (QEMU exits); a failed script leaves U-Boot at its prompt: stop it there.
  qemu-system-aarch64 -M virt -cpu cortex-a53 -m 512 -nographic -monitor none -serial stdio \
    -nic none -no-reboot -bios "$uboot" -drive "if=virtio,format=raw,file=$disk" </dev/null \
    >"$tmp/serial.log" 2>&1 &
  local qemu=$! waited=0
  while kill -0 $qemu 2>/dev/null; do
    if grep -q -e 'SCRIPT FAILED' -e '^=> ' "$tmp/serial.log" || [ $waited -ge 6000 ]; then
      kill $qemu
      wait $qemu || true
      fail "boot $boots: U-Boot did not boot a kernel (script failed, prompt, or 600 s)"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  wait $qemu || fail "qemu-system-aarch64 exited with $? (boot $boots)"
  tr -d '\r' <"$tmp/serial.log" >"$tmp/serial.txt"
  local slot cmdline
  slot=$(sed -n 's/^TERN-ROOTFS: //p' "$tmp/serial.txt")
  cmdline=$(sed -n 's/^TERN-CMDLINE: //p' "$tmp/serial.txt")
  [ -n "$slot" ] || fail "boot $boots: no kernel reported its partition"
  [ "$slot" = "$expect" ] || fail "boot $boots: U-Boot booted $slot, expected $expect"
  printf '%s\n' "$cmdline" >"$tmp/cmdline"
  for v in bootcount upgrade_available mender_boot_part mender_boot_part_hex; do
    local real simv
    real=$(envvar $v)
    simv=$(sed -n "s/^$v=//p" "$tmp/sim.env")
    [ "$real" = "$simv" ] ||
      fail "boot $boots: after real U-Boot $v=$real, the device simulator predicts $v=$simv"
  done
  echo "boot $boots: U-Boot booted $slot ($cmdline); $(grep '^tern: mender_boot_part' "$tmp/serial.txt")"
}

expect_env() {
  local v=$1 want=$2 got
  got=$(envvar "$v")
  [ "$got" = "$want" ] || fail "$3: $v=$got, expected $want"
}

"$tern_artifact" write rootfs-image -f "$tmp/rootfs-b.ext2" -t qemu-arm64 -n release-b -o "$tmp/b.mender" \
  >/dev/null || fail "tern-artifact write"

# factory
boot A
grep -q 'root=/dev/vda2' "$tmp/cmdline" || fail "A booted without root=/dev/vda2: $(cat "$tmp/cmdline")"

# no commit: B is tried once, then U-Boot falls back to A
run_agent install "$tmp/b.mender" >"$tmp/agent.out" 2>&1 || { cat "$tmp/agent.out"; fail "tern-agent install"; }
expect_env upgrade_available 1 "after install"
expect_env mender_boot_part 3 "after install"
boot B
grep -q 'root=/dev/vda3' "$tmp/cmdline" || fail "B booted without root=/dev/vda3: $(cat "$tmp/cmdline")"
expect_env bootcount 1 "U-Boot on the first try of B"
boot A
expect_env upgrade_available 0 "after altbootcmd"
expect_env mender_boot_part 2 "after altbootcmd"
set +e
run_agent resume >"$tmp/agent.out" 2>&1
rc=$?
set -e
[ $rc -eq 1 ] && grep -q '^failure' "$tmp/agent.out" ||
  { cat "$tmp/agent.out"; fail "tern-agent resume after the rollback exited $rc, not reporting a failure"; }
echo "rollback reported: $(grep "^failure" "$tmp/agent.out")"
[ "$(run_agent show-artifact)" = factory ] || fail "after the rollback the installed artifact is $(run_agent show-artifact)"

# commit: B is tried, commits, and stays
run_agent install "$tmp/b.mender" >"$tmp/agent.out" 2>&1 || { cat "$tmp/agent.out"; fail "tern-agent install (again)"; }
boot B
run_agent resume >"$tmp/agent.out" 2>&1 || { cat "$tmp/agent.out"; fail "tern-agent resume on B"; }
grep -q '^success' "$tmp/agent.out" || { cat "$tmp/agent.out"; fail "tern-agent resume on B did not commit"; }
expect_env upgrade_available 0 "after the commit"
boot B
expect_env mender_boot_part 3 "after the commit and a reboot"
[ "$(run_agent show-artifact)" = release-b ] || fail "after the commit the installed artifact is $(run_agent show-artifact)"

# torn commit: the copy the commit wrote is corrupt (a power cut while libubootenv wrote it) ->
# U-Boot and libubootenv both fall back to the older copy, written by U-Boot while B was on trial,
# so B's trial goes on: bootcount passes bootlimit and U-Boot goes back to A.
flags0=$(od -An -tu1 -j $((0x40004)) -N1 "$disk" | tr -d ' ')
flags1=$(od -An -tu1 -j $((0x60004)) -N1 "$disk" | tr -d ' ')
newest=$((flags1 > flags0 ? 0x60000 : 0x40000))
printf 'X' | dd of="$disk" bs=1 seek=$((newest + 100)) conv=notrunc status=none
expect_env upgrade_available 1 "libubootenv after the newest copy was corrupted"
boot A
grep -q 'altbootcmd' "$tmp/serial.txt" || fail "U-Boot went back to A without altbootcmd"
echo "real U-Boot: $boots boots, install -> B, no commit -> A (rollback reported), commit -> B stays," \
  "torn commit -> A"
