# Sourced by the image build scripts (resources/guest-linux/build.sh, resources/rig/build.sh):
# pieces of a small root filesystem taken from Debian packages. The caller defines die().

# install_busybox DEB DESTROOT SCRATCH: busybox from the busybox-static package DEB as
# DESTROOT/bin/busybox, with a link per applet (existing files win); SCRATCH is a work folder.
install_busybox() {
    local deb=$1 dest=$2 scratch=$3 applet
    mkdir -p "$scratch/busybox"
    dpkg-deb -x "$deb" "$scratch/busybox"
    install -D -m 0755 "$scratch/busybox/bin/busybox" "$dest/bin/busybox"
    for applet in $("$dest/bin/busybox" --list-full); do
        [[ -e "$dest/$applet" || -L "$dest/$applet" ]] && continue
        mkdir -p "$dest/$(dirname "$applet")"
        ln -s /bin/busybox "$dest/$applet"
    done
}

# Kernel modules: the caller has run `depmod -b KROOT KVER` on the extracted kernel package.

# copy_modules KROOT KVER DEST ORDERFILE MODULE...: copies each MODULE and, first, its
# dependencies from KROOT into DEST (uncompressed, same paths), appending each module's path
# to DEST/ORDERFILE in load order. Modules built into the kernel are skipped. Sets the array
# KMOD_LOADED to the names handled, in order ("name" or "name (built in)").
copy_modules() {
    local kroot=$1 kver=$2 dest=$3 order=$4 m
    shift 4
    declare -gA KMOD_SEEN=()
    KMOD_LOADED=()
    mkdir -p "$dest/$(dirname "$order")"
    : >"$dest/$order"
    for m in "$@"; do copy_module "$kroot" "$kver" "$dest" "$order" "$m"; done
}

# copy_module KROOT KVER DEST ORDERFILE MODULE: one module, dependencies first.
copy_module() {
    local kroot=$1 kver=$2 dest=$3 order=$4 m=${5//-/_} dep f
    [[ -n ${KMOD_SEEN[$m]:-} ]] && return 0
    KMOD_SEEN[$m]=1
    if sed 's/-/_/g' "$kroot/lib/modules/$kver/modules.builtin" | grep -q "/$m\.ko$"; then
        KMOD_LOADED+=("$m (built in)")
        return 0
    fi
    for dep in $(modinfo -b "$kroot" -k "$kver" -F depends "$m" | tr ',' ' '); do
        copy_module "$kroot" "$kver" "$dest" "$order" "$dep"
    done
    f=$(modinfo -b "$kroot" -k "$kver" -F filename "$m") || die "module $m not found in the kernel package"
    f=${f#"$kroot"/}
    mkdir -p "$dest/$(dirname "$f")"
    case $f in
        *.ko) cp "$kroot/$f" "$dest/$f" ;;
        *.ko.xz) xz -dc "$kroot/$f" >"$dest/${f%.xz}" ;;
        *.ko.zst) zstd -dcq "$kroot/$f" >"$dest/${f%.zst}" ;;
        *.ko.gz) gzip -dc "$kroot/$f" >"$dest/${f%.gz}" ;;
        *) die "unknown module format: $f" ;;
    esac
    echo "/${f%.ko*}.ko" >>"$dest/$order"
    KMOD_LOADED+=("$m")
}
