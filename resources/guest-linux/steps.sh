# /tests/steps.sh: the test mode of the Keel Linux guest (busybox sh), sourced by /init when
# the kernel command line has keel.test=STEP[;STEP...]. test_main runs the steps in order and
# prints KEEL-T-DONE; /init then performs keel.end. The protocol is in README.md ("Test mode");
# in short, on the console, each on a line of its own:
#   KEEL-T-STEP <step>                  before each step (the step as given, e.g. fio:verify2)
#   KEEL-T <name> key=value ...         results (<name>: the step's name, before any ':')
#   KEEL-T-FAIL <step> <reason>         the step failed (reason: free text to end of line)
#   KEEL-T-NOTE <step> <text>           diagnostics (e.g. fio's stderr); parsers ignore these
#   KEEL-T-DONE                         after the last step
# Values never contain spaces: free text goes through esc (% -> %25, space -> %20, tab -> %09,
# CR/LF dropped); names the kernel prints with spaces (hypervisor) get '_' instead.

T_TOOL=/usr/bin/keel-guest-tool
T_CS=/sys/devices/system/clocksource/clocksource0
T_READ_TIMEOUT=600          # seconds console and sync wait for the host's line
T_STEP=""                   # the step being run, as given

# esc TEXT: TEXT as one value without spaces (URL-style escapes, see above).
esc() {
    printf '%s' "$1" | tr -d '\r\n' | sed -e 's/%/%25/g' -e 's/ /%20/g' -e "s/$(printf '\t')/%09/g"
}

t_result() { echo "KEEL-T $*"; }
t_fail() { echo "KEEL-T-FAIL $T_STEP $*" | tr -d '\r'; }
# t_notes FILE: every line of FILE (at most 20) as a KEEL-T-NOTE of the current step.
t_notes() { head -n 20 "$1" 2>/dev/null | tr -d '\r' | sed "s|^|KEEL-T-NOTE $T_STEP |"; }
or_none() { if [ -n "$1" ]; then echo "$1"; else echo none; fi; }

# t_disk NAME: sets T_DEV to the disk's name without /dev/ (vda), or fails the step.
t_disk() {
    T_DEV=${1#/dev/}
    case $T_DEV in
        '' | */* | .*) t_fail "bad disk name '$1'"; return 1 ;;
    esac
    if [ ! -d "/sys/block/$T_DEV" ] || [ ! -b "/dev/$T_DEV" ]; then
        t_fail "no disk /dev/$T_DEV (have: $(ls /sys/block | xargs))"
        return 1
    fi
}

# t_number VALUE WHAT: fails the step unless VALUE is a decimal or 0x-hex number.
t_number() {
    case $1 in
        0x[0-9a-fA-F]*) [ -z "$(printf '%s' "${1#0x}" | tr -d '0-9a-fA-F')" ] && return 0 ;;
        [0-9]*) [ -z "$(printf '%s' "$1" | tr -d '0-9')" ] && return 0 ;;
    esac
    t_fail "$2: expected a number of bytes, got '$1'"
    return 1
}

# t_read_line: reads one line from the console into T_LINE (CR dropped); fails on timeout.
t_read_line() {
    T_LINE=""
    if ! IFS= read -r -t "$T_READ_TIMEOUT" T_LINE </dev/console; then
        t_fail "no line on the console within $T_READ_TIMEOUT s"
        return 1
    fi
    T_LINE=$(printf '%s' "$T_LINE" | tr -d '\r')
}

# --- info ---------------------------------------------------------------------------
# Hyper-V's "privilege flags low 0x.., high 0x.., hints 0x.., misc 0x.." from dmesg as
# low:0x..,high:0x..,hints:0x..,misc:0x.. (none when the guest found no Hyper-V).
hv_features() {
    dmesg | sed -n 's/.*Hyper-V: privilege flags //p' | head -n 1 | tr -d '\r' |
        sed -e 's/ *, */,/g' -e 's/ 0x/:0x/g' -e 's/ /_/g'
}

step_info() {
    hyp=$(dmesg | sed -n 's/.*Hypervisor detected: //p' | head -n 1 | tr -d '\r' | tr ' ' '_')
    avail=$(cat "$T_CS/available_clocksource" 2>/dev/null | tr -s ' \n' ',,' | sed 's/^,//; s/,$//')
    nodes=$(ls -d /sys/devices/system/node/node[0-9]* 2>/dev/null | wc -l)
    t_result "info cpus_online=$(or_none "$(cat /sys/devices/system/cpu/online)")" \
        "nproc=$(nproc)" \
        "memtotal_kb=$(or_none "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)")" \
        "clocksource=$(or_none "$(cat "$T_CS/current_clocksource" 2>/dev/null)")" \
        "available_clocksources=$(or_none "$avail")" \
        "hypervisor=$(or_none "$hyp")" \
        "numa_nodes=$nodes"
    for d in /sys/devices/system/node/node[0-9]*; do
        [ -d "$d" ] || continue
        t_result "node id=${d##*node}" \
            "cpus=$(or_none "$(cat "$d/cpulist")")" \
            "mem_kb=$(or_none "$(awk '/MemTotal:/ { print $4 }' "$d/meminfo")")"
    done
    t_result "cmdline text=$(esc "$(cat /proc/cmdline)")"
    vmbus=no
    [ -d /sys/bus/vmbus ] && vmbus=yes
    t_result "hv features=$(or_none "$(hv_features)") vmbus=$vmbus"
    t_result "apic mode=$(apic_mode)"
    t_result "cache $(cpu0_caches)"
}

# cpu0_caches: "levels=L1d,L1i,L2,L3 llc_shared=0-3": the caches Linux found for CPU 0 (from
# CPUID) and which CPUs share the last of them (none, none when it found no cache).
cpu0_caches() {
    levels=
    llc=none
    for c in /sys/devices/system/cpu/cpu0/cache/index[0-9]*; do
        [ -d "$c" ] || continue
        level="L$(cat "$c/level")"
        case "$(cat "$c/type")" in
            Data) level="${level}d" ;;
            Instruction) level="${level}i" ;;
        esac
        levels="${levels:+$levels,}$level"
        llc=$(cat "$c/shared_cpu_list")
    done
    echo "levels=$(or_none "$levels") llc_shared=$(or_none "$llc")"
}

# apic_mode: x2apic when the kernel switched its local APIC to x2APIC mode (no MMIO access
# left to emulate), xapic when CPUID offers x2APIC but the kernel stayed on MMIO, none when
# CPUID does not offer it.
apic_mode() {
    if dmesg | grep -q -e 'x2apic enabled' -e 'enabled by BIOS, switching to x2apic ops'; then
        echo x2apic
    elif grep -q -w x2apic /proc/cpuinfo; then
        echo xapic
    else
        echo none
    fi
}

# --- fio ----------------------------------------------------------------------------
# fio_counts JSON: "READ_IOS WRITE_IOS SYNC_IOS ERRORS" summed over the jobs of fio's JSON
# document. Depth counts braces: the document is depth 1, each job object depth 2, its
# "read"/"write"/"sync" objects depth 3. ERRORS: each job's total_err when fio reports it (continue_on_error), else
# 1 for each job whose "error" is not 0.
fio_counts() {
    awk '
        function num(s) { sub(/^[^:]*:[ \t]*/, "", s); gsub(/[^0-9]/, "", s); return s + 0 }
        depth == 2 && /^[ \t]*"[a-z_ ]+"[ \t]*:[ \t]*\{/ {
            sec = ""
            if ($0 ~ /^[ \t]*"read"/) sec = "r"
            if ($0 ~ /^[ \t]*"write"/) sec = "w"
            if ($0 ~ /^[ \t]*"sync"/) sec = "s"
        }
        depth == 3 && sec != "" && /^[ \t]*"total_ios"[ \t]*:/ {
            if (sec == "r") r += num($0); else if (sec == "w") w += num($0); else s += num($0)
        }
        depth == 2 && /^[ \t]*"jobname"[ \t]*:/ { jobs++ }
        depth == 2 && /^[ \t]*"error"[ \t]*:/ { if (num($0) != 0) failed[jobs] = 1 }
        depth == 2 && /^[ \t]*"total_err"[ \t]*:/ { total[jobs] = num($0) }
        {
            line = $0
            depth += gsub(/\{/, "", line) - gsub(/\}/, "", line)
            if (depth < 3) sec = ""
        }
        END {
            for (j = 1; j <= jobs; j++) e += (j in total) ? total[j] : (j in failed)
            printf "%d %d %d %d\n", r, w, s, e
        }' "$1"
}

# fio_json_split OUT BODY NOTES: the lines of fio's output file OUT from the first "{" to the
# last "}" into BODY, every other line (fio's notes) appended to NOTES, as init's fio mode does.
fio_json_split() {
    first=$(grep -n '^{$' "$1" | head -n 1 | cut -d: -f1)
    last=$(grep -n '^}$' "$1" | tail -n 1 | cut -d: -f1)
    if [ -n "$first" ] && [ -n "$last" ] && [ "$first" -le "$last" ]; then
        sed -n -e "${first},${last}p" "$1" >"$2"
        sed -e "${first},${last}d" "$1" >>"$3"
    else
        : >"$2"
        cat "$1" >>"$3"
    fi
}

step_fio() {
    name=$1
    case $name in
        '' | */* | .*) t_fail "bad job name '$name' (expected a file name in /fio)"; return ;;
    esac
    if [ -f "/fio/$name.fio" ]; then job=/fio/$name.fio; elif [ -f "/fio/$name" ]; then job=/fio/$name
    else t_fail "no job /fio/$name.fio (have: $(ls /fio | xargs))"; return; fi
    # A missing disk would make fio create a plain file in /dev: refuse before it runs.
    for dev in $(sed -n 's/^[ \t]*filename[ \t]*=[ \t]*\(\/dev\/[^ \t:]*\).*/\1/p' "$job"); do
        [ -b "$dev" ] || { t_fail "job $name needs $dev, which is not a block device"; return; }
    done
    rm -f /tmp/t-fio.json /tmp/t-fio.err
    (cd /tmp && fio --output-format=json --output=/tmp/t-fio.json --eta=never "$job") \
        >/tmp/t-fio.err 2>&1 </dev/null
    rc=$?
    quiet_kernel
    : >>/tmp/t-fio.json
    fio_json_split /tmp/t-fio.json /tmp/t-fio.body /tmp/t-fio.err
    if [ ! -s /tmp/t-fio.body ]; then
        t_notes /tmp/t-fio.err
        t_fail "fio exited with $rc and wrote no JSON: $(grep -m 1 . /tmp/t-fio.err)"
        return
    fi
    set -- $(fio_counts /tmp/t-fio.body)
    t_result "fio job=$name rc=$rc read_ios=$1 write_ios=$2 errors=$4 sync_ios=$3"
    if [ "$rc" -ne 0 ] || [ "$4" -ne 0 ]; then
        t_notes /tmp/t-fio.err
        t_fail "fio exited with $rc, errors=$4: $(grep -m 1 . /tmp/t-fio.err)"
    fi
}

# --- interrupts, queues, read-only, discard/zeroout -----------------------------------
# A /proc/interrupts line is an MSI-X vector if its chip column says so (PCI-MSIX-..., newer
# kernels) or its IRQ is listed as "msix" under /sys/bus/pci/devices/*/msi_irqs/ (6.1 shows
# "PCI-MSI" for MSI and MSI-X alike).
is_msix() {
    case $2 in *PCI-MSIX* | *PCI-MSI-X*) return 0 ;; esac
    grep -qx msix /sys/bus/pci/devices/*/msi_irqs/"$1" 2>/dev/null
}

# irq_total FIELDS...: the sum of the leading numeric fields (the per-CPU counts).
irq_total() {
    sum=0
    for f in "$@"; do
        case $f in '' | *[!0-9]*) break ;; esac
        sum=$((sum + f))
    done
    echo "$sum"
}

step_irqs() {
    count=0
    other=0
    names=""
    : >/tmp/t-irqs
    while read -r irq rest; do
        irq=${irq%:}
        name=${rest##* }
        case $name in virtio*) ;; *) continue ;; esac
        if is_msix "$irq" "$rest"; then
            count=$((count + 1))
            names=${names:+$names,}$name
            msix=yes
        else
            other=$((other + 1))
            msix=no
        fi
        set -f
        echo "irq name=$name msix=$msix count=$(irq_total $rest)" >>/tmp/t-irqs
        set +f
    done </proc/interrupts
    t_result "irqs virtio_msix=$count virtio_other=$other names=$(or_none "$names")"
    while IFS= read -r line; do t_result "$line"; done </tmp/t-irqs
}

step_mq() {
    t_disk "$1" || return
    n=$(ls -d /sys/block/"$T_DEV"/mq/[0-9]* 2>/dev/null | wc -l)
    t_result "mq dev=$T_DEV hw_queues=$n"
}

# t_tool_result ARGS...: runs keel-guest-tool, sets T_RC, T_ERRNO and T_ERROR (escaped text,
# none on success).
t_tool_result() {
    "$T_TOOL" "$@" >/tmp/t-tool.out 2>/tmp/t-tool.err
    T_RC=$?
    T_ERRNO=$(sed -n 's/.*(errno \([0-9]*\))$/\1/p' /tmp/t-tool.err | head -n 1)
    T_ERROR=$(sed -n 's/^keel-guest-tool: [^:]*: \(.*\) (errno [0-9]*)$/\1/p' /tmp/t-tool.err | head -n 1)
    [ -n "$T_ERROR" ] || T_ERROR=$(head -n 1 /tmp/t-tool.err)
    [ "$T_RC" -eq 0 ] && T_ERROR=""
    T_ERRNO=${T_ERRNO:-0}
    T_ERROR=$(or_none "$(esc "$T_ERROR")")
}

step_ro() {
    t_disk "$1" || return
    ro=$(cat "/sys/block/$T_DEV/ro")
    t_tool_result rewrite "/dev/$T_DEV" 0 4096
    t_result "ro dev=$T_DEV ro=$ro write_rc=$T_RC write_errno=$T_ERRNO write_error=$T_ERROR"
}

# step_range discard|zeroout DEV OFFSET LEN
step_range() {
    op=$1
    if [ $# -ne 4 ]; then t_fail "expected $op:DEV:OFFSET:LEN"; return; fi
    t_disk "$2" || return
    t_number "$3" OFFSET || return
    t_number "$4" LEN || return
    t_tool_result "$op" "/dev/$T_DEV" "$3" "$4"
    t_result "$op dev=$T_DEV offset=$3 len=$4 rc=$T_RC errno=$T_ERRNO error=$T_ERROR"
}

# --- console, sync, clocks ----------------------------------------------------------
step_console() {
    t_result "console ready"
    t_read_line || return
    t_result "console line=$(esc "$T_LINE")"
}

step_sync() {
    case $1 in '' | *' '*) t_fail "expected sync:NAME"; return ;; esac
    t_result "sync name=$1"
    t_read_line
}

step_clocksource() {
    [ -n "$1" ] || { t_fail "expected clocksource:NAME"; return; }
    echo "$1" >"$T_CS/current_clocksource" 2>/dev/null
    now=$(cat "$T_CS/current_clocksource" 2>/dev/null)
    t_result "clocksource now=$(or_none "$now")"
    [ "$now" = "$1" ] ||
        t_fail "current clocksource is '$now', not '$1' (available: $(cat "$T_CS/available_clocksource" 2>/dev/null | xargs))"
}

# step_uptime: the guest's boot-time clock (CLOCK_BOOTTIME, /proc/uptime) and wall clock; a
# restored guest's must not be behind what it printed before its snapshot.
step_uptime() {
    t_result "uptime s=$(cut -d ' ' -f 1 /proc/uptime) realtime=$(date +%s)"
}

step_clock() {
    n=${1:-1000000}
    case $n in '' | *[!0-9]*) t_fail "expected clock:N with N a number of reads"; return ;; esac
    source=$(or_none "$(cat "$T_CS/current_clocksource" 2>/dev/null)")
    if ! out=$("$T_TOOL" clock "$n" 2>/tmp/t-tool.err); then
        t_fail "keel-guest-tool clock $n failed: $(head -n 1 /tmp/t-tool.err)"
        return
    fi
    t_result "clock $out source=$source"
}

# --- driver -------------------------------------------------------------------------
# test_split LIST: the steps of a keel.test= value, one a line (separators ';' and '+').
test_split() { printf '%s\n' "$1" | tr ';+' '\n\n' | grep -v '^$'; }

# test_needs_disks LIST: whether a step works on disks (then /init waits for them).
test_needs_disks() {
    test_split "$1" | grep -qE '^(fio|mq|ro|discard|zeroout)(:|$)'
}

# run_step STEP: runs one step; its arguments are the ':'-separated fields after the name.
run_step() {
    T_STEP=$1
    name=${1%%:*}
    set -f
    old_ifs=$IFS
    IFS=:
    set -- $1
    IFS=$old_ifs
    set +f
    shift
    quiet_kernel
    echo "KEEL-T-STEP $T_STEP"
    case $name in
        info) step_info ;;
        fio) step_fio "$1" ;;
        irqs) step_irqs ;;
        mq) step_mq "$1" ;;
        ro) step_ro "$1" ;;
        discard | zeroout) step_range "$name" "$@" ;;
        console) step_console ;;
        sync) step_sync "$1" ;;
        clocksource) step_clocksource "$1" ;;
        clock) step_clock "$1" ;;
        uptime) step_uptime ;;
        *) t_fail "unknown step '$name' (known: info fio irqs mq ro discard zeroout console sync clocksource clock uptime)" ;;
    esac
}

# test_main LIST: runs every step of LIST, then prints KEEL-T-DONE.
test_main() {
    # The host's lines must not come back as echo (stty may be missing: then they do).
    stty -F /dev/console -echo 2>/dev/null
    test_split "$1" >/tmp/t-steps
    while IFS= read -r step; do
        run_step "$step" </dev/null
    done </tmp/t-steps
    quiet_kernel
    echo "KEEL-T-DONE"
}
