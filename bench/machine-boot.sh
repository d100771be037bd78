#!/usr/bin/env bash
# Benchmark: boot to SSH of a machine disk.
#   Kiln:  `kiln disk boot DISK.raw --command true` (release build): what a test instance costs
#          (VirtualMachine.withBooted): an ephemeral ed25519 key, kernel and initramfs read out of
#          the root partition with debugfs, a qcow2 overlay, QEMU q35 with direct kernel boot
#          (the key on the kernel command line), virtio disk and NIC, then `ssh root@… true` until
#          it succeeds. Timed from the command's start to its "SSH answered" line; also reported:
#          the whole command (with the `true`, killing QEMU and removing the overlay).
#   Peer:  the same disk in plain QEMU with no -kernel (SeaBIOS → gptmbr.bin → SYSLINUX → the
#          kernel on the boot partition), `-drive file=disk.raw,format=raw,snapshot=on` (IDE),
#          `-nic user,model=virtio-net-pci,hostfwd=…:22`, timed from QEMU's start until the
#          forwarded port sends an SSH banner ("SSH-2.0-…").
# Both get the same vCPUs and memory (t3.micro: 2, 1 GiB) and the same accelerator (`kiln disk
# accelerator`: KILN_VM_ACCELERATOR, else Kiln's KVM probe; TCG where nested KVM hangs). Every
# boot is a first boot of the generalised disk (host keys are made then), as Kiln runs on an
# overlay and the peer with snapshot=on. Kiln's criterion is stricter (a key login that runs a
# command) than the peer's (a banner). Reports medians and the overhead ratio Kiln/peer. The runs
# alternate which goes first. No assertions on time.
#
# Usage: bash bench/machine-boot.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: a release build under /tmp/kiln-build.lock),
#        BOOT_TIMEOUT (seconds one boot may take, default 300), KILN_VM_ACCELERATOR (kvm|tcg),
#        KILN_BENCH_CACHE (default /var/tmp/kiln-bench), KEEP_WORK=1.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BENCH_DIR/machine_lib.sh"

BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
check_runs
[[ $BOOT_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BOOT_TIMEOUT must be a positive integer (got '$BOOT_TIMEOUT')"
need_disk_tools
need qemu-system-x86_64:qemu-system-x86 ssh:openssh-client ssh-keygen:openssh-client
build_kiln
ensure_machine_rootfs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-boot.XXXXXX")
QEMU_PID=""
stop_qemu() {
    [[ -n $QEMU_PID ]] || return 0
    kill -KILL "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=""
}
cleanup() {
    stop_qemu
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "assembling the disk both boot"
"$KILN" disk assemble "$MACHINE_ROOTFS" --volume-size 2 --output "$WORK/disk" --quiet >"$WORK/assemble.out" \
    || die "kiln disk assemble failed"
DISK=$WORK/disk/disk.raw
ACCEL=$("$KILN" disk accelerator 2>"$WORK/accelerator.err") || die "kiln disk accelerator failed"
log "accelerator: $ACCEL ($(cat "$WORK/accelerator.err"))"
SMP=2 MEM=1024 # t3.micro, what `kiln disk boot` uses by default

# run_kiln RUN -> sets KILN_SSH (start to SSH answered), KILN_WALL, KILN_QEMU_SSH (Kiln's own figure)
run_kiln() {
    local err=$WORK/kiln-$1.err start end answered
    start=$(now)
    "$KILN" disk boot "$DISK" --accelerator "$ACCEL" --command true --timeout "$BOOT_TIMEOUT" --scratch "$WORK" \
        2> >(stamp_lines "$err") >"$WORK/kiln-$1.out" || { sleep 0.2; cat "$err" >&2; die "kiln disk boot failed"; }
    end=$(now)
    sleep 0.2 # the stamping reader finishes its last line
    answered=$(stamp_of "$err" 'SSH answered')
    [[ -n $answered ]] || die "no 'SSH answered' line from kiln disk boot: $(cat "$err")"
    KILN_SSH=$(elapsed "$start" "$answered")
    KILN_WALL=$(elapsed "$start" "$end")
    KILN_QEMU_SSH=$(sed -n 's/^ssh-seconds //p' "$WORK/kiln-$1.out")
}

# banner PORT: succeeds when the port sends an SSH identification line.
banner() {
    local line
    line=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -c 8 <&3' _ "$1" 2>/dev/null || true)
    [[ $line == SSH-* ]]
}

# run_peer RUN -> sets PEER_SSH
run_peer() {
    local port start deadline accel_args=()
    port=$(free_port)
    [[ $ACCEL == kvm ]] && accel_args=(-cpu host)
    start=$(now)
    qemu-system-x86_64 -accel "$ACCEL" "${accel_args[@]}" -smp "$SMP" -m "$MEM" -display none -no-reboot \
        -serial "file:$WORK/peer-$1.serial" -drive "file=$DISK,format=raw,snapshot=on" \
        -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$port-:22" 2>"$WORK/peer-$1.err" &
    QEMU_PID=$!
    deadline=$(($(date +%s) + BOOT_TIMEOUT))
    until banner "$port"; do
        kill -0 "$QEMU_PID" 2>/dev/null || { cat "$WORK/peer-$1.err" >&2; die "QEMU exited before sshd answered"; }
        (($(date +%s) < deadline)) || { tail -n 20 "$WORK/peer-$1.serial" >&2; die "no SSH banner within $BOOT_TIMEOUT s"; }
        sleep 0.2
    done
    PEER_SSH=$(elapsed "$start" "$(now)")
    stop_qemu
    grep -q 'SYSLINUX' "$WORK/peer-$1.serial" || die "the peer's serial console shows no SYSLINUX: did it boot another way?"
}

kiln_ssh=() kiln_wall=() kiln_qemu=() peer_ssh=()
for run in $(seq 1 "$RUNS"); do
    if ((run % 2)); then run_kiln "$run"; run_peer "$run"; else run_peer "$run"; run_kiln "$run"; fi
    kiln_ssh+=("$KILN_SSH") kiln_wall+=("$KILN_WALL") kiln_qemu+=("$KILN_QEMU_SSH") peer_ssh+=("$PEER_SSH")
    log "run $run: kiln to SSH $KILN_SSH s (QEMU start to SSH $KILN_QEMU_SSH s, whole command $KILN_WALL s); plain QEMU to banner $PEER_SSH s"
done

kiln_median=$(median "${kiln_ssh[@]}")
peer_median=$(median "${peer_ssh[@]}")
r=$(ratio "$kiln_median" "$peer_median")
echo
echo "machine-boot: bootstrap:debian:bookworm:vm on a 2 GiB disk, $ACCEL, $SMP vCPUs, $MEM MiB, $RUNS runs, $(machine_line), load at start $LOAD_AT_START"
printf '%-40s %8s   %s\n' "kiln disk boot, start to SSH answered" "${kiln_median}s" "(${kiln_ssh[*]})"
printf '%-40s %8s   %s\n' "  of which QEMU start to SSH" "$(median "${kiln_qemu[@]}")s" "(${kiln_qemu[*]})"
printf '%-40s %8s   %s\n' "  whole command (with stop)" "$(median "${kiln_wall[@]}")s" "(${kiln_wall[*]})"
printf '%-40s %8s   %s\n' "plain QEMU via SYSLINUX, to SSH banner" "${peer_median}s" "(${peer_ssh[*]})"
printf '%-40s %8s\n' "ratio kiln/peer" "$r"
echo "RESULT machine-boot kiln=${kiln_median}s peer=${peer_median}s ratio=$r accelerator=$ACCEL kiln-wall=$(median "${kiln_wall[@]}")s"
