#!/bin/bash
# guest/build.sh OUTDIR — build "ttylinux", mallee's tiny guest image, reproducibly.
#
# Writes into OUTDIR:
#   vmlinuz        Debian's kernel (from linux-image-amd64's concrete linux-image-6.x package)
#   initrd.img     gzip'd newc cpio: busybox-static, the boot scripts in guest/rootfs/, and
#                  only the modules needed (virtio_pci, virtio_blk, virtio_net, virtio_console,
#                  ext4, and button + evdev for the ACPI power button, with their
#                  dependencies, loaded in dependency order)
#   root.img       a small raw ext4 file system with the same tree (made by mke2fs -d)
#   manifest.json  name, size and "sha256:<hex>" digest of each file, plus the inputs
#
# Nothing is installed on the host: the packages are fetched with `apt-get download` and
# unpacked with `dpkg-deb -x` into a temporary directory. The only network used is
# Debian's apt repositories. Same inputs (package versions, SOURCE_DATE_EPOCH, this
# directory) give byte-identical outputs.
#
# Runs as root (device nodes in the initrd) on Debian 12. Host tools it needs:
#   apt-get, apt-cache        (apt)
#   dpkg-deb                  (dpkg)
#   depmod, modprobe          (kmod)       dependency order of the modules, modules.dep
#   cpio                      (cpio)       GNU cpio >= 2.13 for --reproducible
#   gzip                      (gzip)
#   mke2fs, debugfs, e2fsck   (e2fsprogs)  mke2fs >= 1.43 for -d
#   sha256sum, stat, touch, truncate, mknod, install, sort, mktemp, ... (coreutils)
#   find, xargs (findutils), sed, grep, awk (mawk or gawk)
#   xz / zstd                 only if the kernel package ships compressed modules
#
# Environment (all optional):
#   SOURCE_DATE_EPOCH          time stamp of every file in the outputs (default: the newest
#                              of vmlinuz and busybox in the packages)
#   MALLEE_GUEST_KERNEL_META   kernel meta package to resolve (default linux-image-amd64)
#   MALLEE_GUEST_KERNEL_PKG    concrete kernel package, "name" or "name=version" (skips
#                              resolving the meta package)
#   MALLEE_GUEST_BUSYBOX_PKG   default busybox-static ("name=version" pins it)
#   MALLEE_GUEST_MODULES       modules to include (default below); dependencies are added
#   MALLEE_GUEST_DEB_DIR       keep the downloaded .debs here and reuse them when their
#                              SHA256 still matches the repository's
#   MALLEE_GUEST_ROOT_SIZE     size of root.img (default 16M)
#   MALLEE_GUEST_FS_UUID, MALLEE_GUEST_FS_HASH_SEED   fixed UUIDs for root.img
#   MALLEE_GUEST_KEEP_WORK=1   keep the temporary work directory (its path is printed)
set -euo pipefail

prog=${0##*/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "$prog: error: $*" >&2; exit 1; }
log() { echo "$prog: $*" >&2; }

usage() {
	echo "usage: $prog OUTDIR" >&2
	echo "builds vmlinuz, initrd.img, root.img and manifest.json into OUTDIR" >&2
	exit 2
}

[ "$#" -eq 1 ] || usage
case "$1" in -h|--help) usage ;; esac
outdir=$1

kernel_meta=${MALLEE_GUEST_KERNEL_META:-linux-image-amd64}
kernel_pkg=${MALLEE_GUEST_KERNEL_PKG:-}
busybox_pkg=${MALLEE_GUEST_BUSYBOX_PKG:-busybox-static}
modules=${MALLEE_GUEST_MODULES:-virtio_pci virtio_blk virtio_net virtio_console ext4 button evdev}
root_size=${MALLEE_GUEST_ROOT_SIZE:-16M}
fs_uuid=${MALLEE_GUEST_FS_UUID:-6d616c6c-6565-4774-b479-6c696e757800}
fs_hash_seed=${MALLEE_GUEST_FS_HASH_SEED:-6d616c6c-6565-4861-b368-736565640000}
rootfs_src=$here/rootfs
mke2fs_conf=$here/mke2fs.conf

# --- checks -------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (it creates device nodes for the initrd)"

missing=""
need() { # need TOOL PACKAGE
	command -v "$1" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$1" >/dev/null 2>&1 \
		|| missing="$missing $1($2)"
}
need apt-get apt; need apt-cache apt; need dpkg-deb dpkg
need depmod kmod; need modprobe kmod
need cpio cpio; need gzip gzip
need mke2fs e2fsprogs; need debugfs e2fsprogs; need e2fsck e2fsprogs
for t in sha256sum stat touch truncate mknod install sort mktemp cp ln; do need "$t" coreutils; done
need find findutils; need xargs findutils; need sed sed; need grep grep; need awk mawk
[ -z "$missing" ] || die "missing host tools (package in brackets):$missing — install them with apt-get install"
export PATH=$PATH:/usr/sbin:/sbin
cpio_help=$(cpio --help 2>&1 || true)   # not piped into grep -q: SIGPIPE + pipefail
case "$cpio_help" in
	*--reproducible*) ;;
	*) die "cpio lacks --reproducible (need GNU cpio >= 2.13)" ;;
esac
[ -d "$rootfs_src" ] || die "missing $rootfs_src"
[ -f "$mke2fs_conf" ] || die "missing $mke2fs_conf"

export LC_ALL=C TZ=UTC
umask 022

work=$(mktemp -d "${TMPDIR:-/tmp}/mallee-guest.XXXXXX")
cleanup() {
	if [ "${MALLEE_GUEST_KEEP_WORK:-0}" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
mkdir -p "$work/empty" "$work/debs" "$work/kernel" "$work/busybox" "$work/root" "$work/out" "$work/modprobe.d"

# --- 1. resolve and fetch the packages ------------------------------------------------
if ! apt-cache show --no-all-versions "$kernel_meta" >/dev/null 2>&1 \
	|| ! apt-cache show --no-all-versions "${busybox_pkg%%=*}" >/dev/null 2>&1; then
	log "apt does not know $kernel_meta/$busybox_pkg yet: running apt-get update"
	apt-get update -q >&2 || die "apt-get update failed"
fi

if [ -z "$kernel_pkg" ]; then
	# linux-image-amd64 depends on exactly one concrete package, e.g.
	# "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
	dep=$(apt-cache show --no-all-versions "$kernel_meta" | sed -n 's/^Depends: //p' | tr ',|' '\n' \
		| sed -n 's/^ *\(linux-image-[0-9][^ ]*\)\( *(= *\([^)]*\))\)\{0,1\} *$/\1 \3/p' | sed -n 1p)
	[ -n "$dep" ] || die "cannot find the concrete linux-image-* package that $kernel_meta depends on"
	kname=${dep%% *}
	kversion=${dep#* }
	if [ -n "$kversion" ] && [ "$kversion" != "$dep" ]; then
		kernel_pkg="$kname=$kversion"
	else
		kernel_pkg=$kname
	fi
	log "$kernel_meta -> $kernel_pkg"
fi

deb_dir=${MALLEE_GUEST_DEB_DIR:-$work/debs}
mkdir -p "$deb_dir"
deb_dir=$(cd "$deb_dir" && pwd)

# fetch_deb SPEC: downloads SPEC ("name" or "name=version") into $deb_dir (unless an
# identical file is already there) and prints the .deb's path.
fetch_deb() {
	local spec=$1 line file sha have
	# --print-uris prints nothing for files present in the current directory: ask in an empty one
	line=$(cd "$work/empty" && apt-get download --print-uris "$spec" 2>/dev/null | sed -n 1p)
	[ -n "$line" ] || die "apt cannot download $spec (apt-get update? is the version still in the archive?)"
	file=$(echo "$line" | awk '{print $2}')
	sha=$(echo "$line" | sed -n 's/.* SHA256:\([0-9a-f]*\).*/\1/p')
	have=""
	if [ -f "$deb_dir/$file" ] && [ -n "$sha" ]; then
		have=$(sha256sum "$deb_dir/$file" | awk '{print $1}')
	fi
	if [ -z "$sha" ] || [ "$have" != "$sha" ]; then
		rm -f "${deb_dir:?}/$file"
		log "downloading $spec"
		(cd "$deb_dir" && apt-get -q -o APT::Sandbox::User=root download "$spec" >&2) \
			|| die "apt-get download $spec failed"
	else
		log "reusing $deb_dir/$file"
	fi
	[ -f "$deb_dir/$file" ] || die "apt-get download $spec did not produce $file"
	if [ -n "$sha" ]; then
		have=$(sha256sum "$deb_dir/$file" | awk '{print $1}')
		[ "$have" = "$sha" ] || die "$file: SHA256 $have does not match the archive's $sha"
	fi
	echo "$deb_dir/$file"
}

kernel_deb=$(fetch_deb "$kernel_pkg")
busybox_deb=$(fetch_deb "$busybox_pkg")

deb_field() { dpkg-deb -f "$1" "$2"; }
kernel_name=$(deb_field "$kernel_deb" Package)
kernel_version=$(deb_field "$kernel_deb" Version)
busybox_name=$(deb_field "$busybox_deb" Package)
busybox_version=$(deb_field "$busybox_deb" Version)
kernel_deb_sha=$(sha256sum "$kernel_deb" | awk '{print $1}')
busybox_deb_sha=$(sha256sum "$busybox_deb" | awk '{print $1}')

# --- 2. unpack ------------------------------------------------------------------------
log "unpacking $kernel_name $kernel_version and $busybox_name $busybox_version"
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"

kroot=$work/kernel
if [ ! -d "$kroot/lib/modules" ] && [ -d "$kroot/usr/lib/modules" ]; then
	mkdir -p "$kroot/lib"
	ln -s ../usr/lib/modules "$kroot/lib/modules"
fi
kvers=$(find "$kroot/lib/modules/" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
if [ -z "$kvers" ] || [ "$(echo "$kvers" | wc -l)" -ne 1 ]; then
	die "expected one kernel in $kernel_deb, found: ${kvers:-none}"
fi
kver=$kvers
vmlinuz=""
for f in "$kroot/boot/vmlinuz-$kver" "$kroot/usr/lib/linux/vmlinuz-$kver"; do
	[ -f "$f" ] && { vmlinuz=$f; break; }
done
[ -n "$vmlinuz" ] || die "no vmlinuz-$kver in $kernel_deb"

busybox_bin=""
for f in "$work/busybox/bin/busybox" "$work/busybox/usr/bin/busybox"; do
	[ -f "$f" ] && { busybox_bin=$f; break; }
done
[ -n "$busybox_bin" ] || die "no busybox binary in $busybox_deb"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	a=$(stat -c %Y "$vmlinuz")
	b=$(stat -c %Y "$busybox_bin")
	SOURCE_DATE_EPOCH=$(( a > b ? a : b ))
fi
case "$SOURCE_DATE_EPOCH" in ''|*[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds" ;; esac
export SOURCE_DATE_EPOCH

# --- 3. the modules, in dependency order ---------------------------------------------
depmod -b "$kroot" -C "$work/modprobe.d" "$kver"
kmoddir=$kroot/lib/modules/$kver
modlist=$work/modules.list
: > "$modlist"
for m in $modules; do
	deps=$(modprobe -C "$work/modprobe.d" -d "$kroot" -S "$kver" --show-depends "$m") \
		|| die "module $m not found in $kernel_name"
	# lines: "insmod /path/to/x.ko [params]" (or "builtin x" for built-in ones)
	echo "$deps" | awk '$1 == "insmod" {print $2}' >> "$modlist"
done
# keep the first occurrence: each --show-depends list is already in load order
awk '!seen[$0]++' "$modlist" > "$modlist.uniq"

root=$work/root
rmoddir=$root/lib/modules/$kver
mkdir -p "$rmoddir"
: > "$rmoddir/mallee.modules"
while read -r path; do
	rel=${path#"$kmoddir"/}
	[ "$rel" != "$path" ] || die "unexpected module path $path"
	dest=$rmoddir/$rel
	mkdir -p "$(dirname "$dest")"
	case "$rel" in
		*.ko) install -m 0644 "$path" "$dest" ;;
		*.ko.xz) xz -dc "$path" > "${dest%.xz}"; dest=${dest%.xz}; rel=${rel%.xz} ;;
		*.ko.zst) zstd -qdc "$path" > "${dest%.zst}"; dest=${dest%.zst}; rel=${rel%.zst} ;;
		*.ko.gz) gzip -dc "$path" > "${dest%.gz}"; dest=${dest%.gz}; rel=${rel%.gz} ;;
		*) die "unknown module file type: $rel" ;;
	esac
	chmod 0644 "$dest"
	echo "$rel" >> "$rmoddir/mallee.modules"
done < "$modlist.uniq"
install -m 0644 "$kmoddir/modules.builtin" "$rmoddir/modules.builtin"
if [ -f "$kmoddir/modules.builtin.modinfo" ]; then
	install -m 0644 "$kmoddir/modules.builtin.modinfo" "$rmoddir/modules.builtin.modinfo"
fi
cp "$rmoddir/mallee.modules" "$rmoddir/modules.order"
# modules.dep & co. for the guest's own modprobe (the kernel calls it for e.g. crypto)
depmod -b "$root" -C "$work/modprobe.d" "$kver"
log "modules ($(wc -l < "$rmoddir/mallee.modules")): $(sed 's|.*/||; s|\.ko$||' "$rmoddir/mallee.modules" | tr '\n' ' ')"

# --- 4. the root tree -----------------------------------------------------------------
for d in bin sbin usr/bin usr/sbin etc dev proc sys run tmp mnt/root root var/log \
	usr/share/udhcpc; do
	mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp -R "$rootfs_src/." "$root/"
# modes do not depend on the checkout's umask or git's file modes
find "$root/etc" -type d -exec chmod 0755 {} +
find "$root/etc" -type f -exec chmod 0644 {} +
chmod 0755 "$root/etc/init.d/rcS" "$root/etc/udhcpc/default.script" "$root/etc/acpi/PWRF/00000080"
chmod 0600 "$root/etc/shadow"
ln -s ../../../etc/udhcpc/default.script "$root/usr/share/udhcpc/default.script"

install -m 0755 "$busybox_bin" "$root/bin/busybox"
"$root/bin/busybox" --list-full | sort | while read -r applet; do
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
[ -L "$root/sbin/init" ] || die "busybox has no init applet"
ln -s bin/busybox "$root/init"   # the kernel runs /init from the initramfs: busybox init

mknod -m 0600 "$root/dev/console" c 5 1
mknod -m 0666 "$root/dev/null" c 1 3

cat > "$root/etc/mallee-release" <<EOF
NAME=ttylinux
DESCRIPTION="mallee guest image"
KERNEL=$kver
KERNEL_PACKAGE=$kernel_name=$kernel_version
BUSYBOX_PACKAGE=$busybox_name=$busybox_version
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH
EOF
cat > "$root/etc/os-release" <<EOF
NAME="ttylinux"
PRETTY_NAME="ttylinux (mallee guest image, busybox $busybox_version, Linux $kver)"
ID=ttylinux
HOME_URL="https://github.com/mallee"
EOF
chmod 0644 "$root/etc/mallee-release" "$root/etc/os-release"

# reproducible metadata: one time stamp for everything (-h: the links themselves)
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

if [ -n "$(find "$root" -name '*[[:space:]"\\]*')" ]; then
	die "file names with white space or quotes in the tree (debugfs commands would break)"
fi

# --- 5. initrd.img ----------------------------------------------------------------------
log "writing initrd.img"
(cd "$root" && find . -mindepth 1 -printf '%P\n' | sort \
	| cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n > "$work/out/initrd.img"

# --- 6. root.img --------------------------------------------------------------------------
log "writing root.img ($root_size)"
truncate -s "$root_size" "$work/out/root.img"
MKE2FS_CONFIG=$mke2fs_conf E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH \
	mke2fs -q -F -t ext4 -L ttylinux -m 0 -U "$fs_uuid" \
	-E "hash_seed=$fs_hash_seed,root_owner=0:0,nodiscard" \
	-d "$root" "$work/out/root.img" >&2
# mke2fs -d copies each file's ctime and atime from the staging tree, and the host
# cannot set a ctime: give every inode the fixed time stamp with debugfs instead.
{
	echo "sif / ctime @$SOURCE_DATE_EPOCH"
	echo "sif / atime @$SOURCE_DATE_EPOCH"
	echo "sif /lost+found ctime @$SOURCE_DATE_EPOCH"
	echo "sif /lost+found atime @$SOURCE_DATE_EPOCH"
	(cd "$root" && find . -mindepth 1 -printf '%P\n' | sort) | while read -r p; do
		echo "sif /$p ctime @$SOURCE_DATE_EPOCH"
		echo "sif /$p atime @$SOURCE_DATE_EPOCH"
	done
} > "$work/debugfs.cmds"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/debugfs.cmds" "$work/out/root.img" \
	> "$work/debugfs.log" 2>&1 || { cat "$work/debugfs.log" >&2; die "debugfs failed"; }
# debugfs -f echoes each command ("debugfs: sif ..."); anything else is a complaint
if grep -v -e '^debugfs [0-9]' -e '^debugfs: sif ' "$work/debugfs.log" >/dev/null; then
	cat "$work/debugfs.log" >&2
	die "debugfs reported problems while fixing the time stamps"
fi
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH e2fsck -fn "$work/out/root.img" > "$work/e2fsck.log" 2>&1 \
	|| { cat "$work/e2fsck.log" >&2; die "root.img does not pass e2fsck"; }

# --- 7. vmlinuz and manifest.json -------------------------------------------------------
install -m 0644 "$vmlinuz" "$work/out/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$work/out/vmlinuz" "$work/out/initrd.img" "$work/out/root.img"

json_entry() { # json_entry NAME -> one "files" element
	local f=$work/out/$1
	printf '    {"name": "%s", "size": %s, "digest": "sha256:%s"}' \
		"$1" "$(stat -c %s "$f")" "$(sha256sum "$f" | awk '{print $1}')"
}
{
	echo "{"
	echo '  "name": "ttylinux",'
	echo '  "format": 1,'
	echo "  \"kernel_release\": \"$kver\","
	echo '  "cmdline": "console=ttyS0",'
	echo "  \"source_date_epoch\": $SOURCE_DATE_EPOCH,"
	echo '  "packages": ['
	printf '    {"name": "%s", "version": "%s", "sha256": "%s"},\n' "$kernel_name" "$kernel_version" "$kernel_deb_sha"
	printf '    {"name": "%s", "version": "%s", "sha256": "%s"}\n' "$busybox_name" "$busybox_version" "$busybox_deb_sha"
	echo '  ],'
	echo '  "files": ['
	json_entry vmlinuz; echo ","
	json_entry initrd.img; echo ","
	json_entry root.img; echo
	echo '  ]'
	echo "}"
} > "$work/out/manifest.json"
touch -d "@$SOURCE_DATE_EPOCH" "$work/out/manifest.json"

# --- 8. publish -----------------------------------------------------------------------------
# Each file is renamed into place; manifest.json goes last, so a directory with a
# manifest always describes complete files.
mkdir -p "$outdir"
rm -f "$outdir/manifest.json"
for f in vmlinuz initrd.img root.img manifest.json; do
	cp -p "$work/out/$f" "$outdir/.$f.new"
	mv -f "$outdir/.$f.new" "$outdir/$f"
done
log "done: $(cd "$outdir" && pwd)"
for f in vmlinuz initrd.img root.img manifest.json; do
	printf '  %-14s %9s bytes\n' "$f" "$(stat -c %s "$outdir/$f")" >&2
done
