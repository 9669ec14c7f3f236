# Tern's A/B boot for U-Boot: Mender's boot logic as a boot script, for a U-Boot built without
# CONFIG_BOOTCOUNT_LIMIT and without a redundant environment of its own (Debian's u-boot-qemu is
# both). distro_bootcmd finds it as boot.scr on the boot partition (mkimage -T script). It
#  1. reads the environment the agent writes with libubootenv: two copies on the raw disk, as
#     /etc/fw_env.config names them (here: blocks 0x200 and 0x300 of 512 bytes, 0x4000 bytes each),
#     the newer valid copy wins, as in U-Boot's own redundant environment;
#  2. counts the boot while upgrade_available=1 and saves (CONFIG_BOOTCOUNT_ENV); past bootlimit it
#     runs altbootcmd (Mender's: the other partition, upgrade_available=0, save);
#  3. boots /boot/Image and /boot/initrd.img of partition mender_boot_part with root=/dev/vda<N>.
# setexpr counts in hex and itest compares in hex: bootcount and bootlimit agree with U-Boot's
# decimal ones while they stay below 10.

# Constants are shell variables (not saved with the environment); `run` needs environment variables.
tern_env_blk0=0x200
tern_env_blk1=0x300
tern_env_blocks=0x20
# A copy is crc32 (4), flags (1), data (0x3ffb); `env import -c` wants crc32 and data only.
tern_env_data=0x3ffb
tern_env_plain=0x3fff
tern_buf0=0x48000000
tern_buf1=0x48010000
tern_plain=0x48020000
virtio dev 0

# tern_import0 / tern_import1: import copy N if its CRC is good.
setenv tern_import0 'cp.b ${tern_buf0} ${tern_plain} 4; setexpr tern_src ${tern_buf0} + 5; setexpr tern_dst ${tern_plain} + 4; cp.b ${tern_src} ${tern_dst} ${tern_env_data}; env import -c ${tern_plain} ${tern_env_plain} && setenv tern_active 0 && setexpr.b tern_flags *${tern_f0}'
setenv tern_import1 'cp.b ${tern_buf1} ${tern_plain} 4; setexpr tern_src ${tern_buf1} + 5; setexpr tern_dst ${tern_plain} + 4; cp.b ${tern_src} ${tern_dst} ${tern_env_data}; env import -c ${tern_plain} ${tern_env_plain} && setenv tern_active 1 && setexpr.b tern_flags *${tern_f1}'

# 1. The environment: the newer copy first (flags count up; 255 wraps to 0), the other if its CRC is bad.
virtio read ${tern_buf0} ${tern_env_blk0} ${tern_env_blocks}
virtio read ${tern_buf1} ${tern_env_blk1} ${tern_env_blocks}
setexpr tern_f0 ${tern_buf0} + 4
setexpr tern_f1 ${tern_buf1} + 4
setenv tern_first 0
if itest.b *${tern_f0} == 0xff && itest.b *${tern_f1} == 0; then
  setenv tern_first 1
elif itest.b *${tern_f1} == 0xff && itest.b *${tern_f0} == 0; then
  setenv tern_first 0
elif itest.b *${tern_f1} > *${tern_f0}; then
  setenv tern_first 1
fi
setenv tern_active none
setenv tern_flags 0
if test ${tern_first} = 1; then
  run tern_import1 || run tern_import0
else
  run tern_import0 || run tern_import1
fi
if test "${tern_active}" = none; then
  echo "tern: no valid copy of the environment, using the defaults"
fi
env exists bootlimit || setenv bootlimit 1
env exists mender_boot_part || setenv mender_boot_part 2
env exists mender_boot_part_hex || setenv mender_boot_part_hex ${mender_boot_part}

# The logic, defined after the import so that a saved copy never replaces it.
# tern_saveenv: Mender's saveenv. Writes the whole environment to the older copy with flags + 1.
setenv tern_saveenv 'if test "${tern_active}" = 0; then setenv tern_active 1; setenv tern_tbuf ${tern_buf1}; setenv tern_tblk ${tern_env_blk1}; else setenv tern_active 0; setenv tern_tbuf ${tern_buf0}; setenv tern_tblk ${tern_env_blk0}; fi; setexpr tern_flags ${tern_flags} + 1; if itest ${tern_flags} > 0xff; then setenv tern_flags 0; fi; setexpr tern_dst ${tern_tbuf} + 4; mw.b ${tern_dst} ${tern_flags} 1; env export -c -s ${tern_env_plain} ${tern_plain}; cp.b ${tern_plain} ${tern_tbuf} 4; setexpr tern_src ${tern_plain} + 4; setexpr tern_dst ${tern_tbuf} + 5; cp.b ${tern_src} ${tern_dst} ${tern_env_data}; virtio write ${tern_tbuf} ${tern_tblk} ${tern_env_blocks}'

# Mender's integration, with tern_saveenv for saveenv.
setenv mender_altbootcmd 'if test ${mender_boot_part} = 2; then setenv mender_boot_part 3; setenv mender_boot_part_hex 3; else setenv mender_boot_part 2; setenv mender_boot_part_hex 2; fi; setenv upgrade_available 0; run tern_saveenv'
setenv altbootcmd 'run mender_altbootcmd; run tern_bootcmd'
setenv mender_setup 'setenv bootargs console=ttyAMA0 quiet panic=-1 root=/dev/vda${mender_boot_part} rootwait'
setenv mender_try_to_recover 'if test "${upgrade_available}" = 1; then reset; fi'
setenv tern_bootcmd 'run mender_setup; load virtio 0:${mender_boot_part_hex} ${kernel_addr_r} /boot/Image && load virtio 0:${mender_boot_part_hex} ${ramdisk_addr_r} /boot/initrd.img && booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr}; run mender_try_to_recover'

# 2. bootcount (U-Boot's bootcount_env: counts and saves only while an upgrade is on trial).
if test "${upgrade_available}" = 1; then
  env exists bootcount || setenv bootcount 0
  setexpr bootcount ${bootcount} + 1
  run tern_saveenv
else
  setenv bootcount 1
fi
echo "tern: mender_boot_part=${mender_boot_part} upgrade_available=${upgrade_available} bootcount=${bootcount} bootlimit=${bootlimit}"

# 3. Autoboot: past bootlimit, altbootcmd instead of bootcmd.
if itest ${bootlimit} != 0 && itest ${bootcount} > ${bootlimit}; then
  echo "tern: bootcount ${bootcount} > bootlimit ${bootlimit}: altbootcmd"
  run altbootcmd
else
  run tern_bootcmd
fi
