#!/bin/bash
# guest/debian/build.sh OUTDIR — build a Debian 12 (bookworm) guest image with Debian's
# own cloud-init, for mallee's node controller (direct kernel boot).
#
# Writes into OUTDIR:
#   vmlinuz        the kernel of linux-image-cloud-amd64 (default; see MALLEE_DEBIAN_KERNEL)
#   initrd.img     the initramfs made by Debian's initramfs-tools in the image, with
#                  virtio_pci, virtio_blk, virtio_net, virtio_scsi and ext4 forced in
#   root.img       a raw ext4 file system (no partition table) holding the root, 1.5 GiB
#                  by default; boot it as /dev/vda with "root=/dev/vda console=ttyS0"
#   manifest.json  name, size and "sha256:<hex>" digest of each file (the format of
#                  guest/build.sh), plus every installed package (name, version, SHA-256
#                  of its .deb), the kernel release and source_date_epoch
#
# The root is made by debootstrap (--variant=minbase) and apt in a chroot; the only
# network used is the Debian archive (deb.debian.org, or snapshot.debian.org when
# MALLEE_DEBIAN_SNAPSHOT is set). cloud-init's configuration is Debian's, unedited: the
# platform tells cloud-init that it runs on EC2 (see NOTES.md). What the image adds:
#   - systemd-networkd with DHCP on every en*/eth* NIC (rootfs/etc/systemd/network/), and
#     systemd-resolved for DNS; cloud-init renders its own networkd files on top
#   - a fallback unit that makes SSH host keys when cloud-init did not run
#   - /etc/fstab (root by label "debian-root"), no SSH host keys, an empty machine-id
#   - no documentation, manual pages or translations (rootfs/etc/dpkg/dpkg.cfg.d/)
#
# Reproducible as far as the archive allows: every time stamp in root.img and the
# initramfs is SOURCE_DATE_EPOCH, the file system has fixed UUIDs and geometry, and the
# package set is recorded in the manifest. Against the moving deb.debian.org, a rebuild
# gets the same packages only until the archive changes: pin a point in time with
# MALLEE_DEBIAN_SNAPSHOT, and/or the exact versions of an earlier build with
# MALLEE_DEBIAN_PIN_MANIFEST (the build then fails rather than drift).
#
# Runs as root on Debian 12. Host tools (checked at start): debootstrap, chroot, mount,
# mke2fs/debugfs/e2fsck (e2fsprogs >= 1.43), sha256sum and coreutils, findutils, sed,
# awk, and python3 only with MALLEE_DEBIAN_PIN_MANIFEST.
#
# Environment (all optional):
#   SOURCE_DATE_EPOCH              time stamp of every file (default: the newest file
#                                  time in the installed packages, so the same packages
#                                  give the same value)
#   MALLEE_DEBIAN_SUITE            default bookworm
#   MALLEE_DEBIAN_MIRROR           default http://deb.debian.org/debian
#   MALLEE_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#                                  ("none": build without security updates)
#   MALLEE_DEBIAN_SNAPSHOT         e.g. 20250520T000000Z: take both archives from
#                                  snapshot.debian.org at that time (the image's own
#                                  sources.list still names deb.debian.org)
#   MALLEE_DEBIAN_PIN_MANIFEST     manifest.json of an earlier build: install exactly its
#                                  package versions, fail if the archive lacks one
#   MALLEE_DEBIAN_KERNEL           default linux-image-cloud-amd64 (or linux-image-amd64)
#   MALLEE_DEBIAN_EXTRA_PACKAGES   more packages to install (space separated)
#   MALLEE_DEBIAN_ROOT_SIZE        size of root.img (default 1536M)
#   MALLEE_DEBIAN_FS_UUID, MALLEE_DEBIAN_FS_HASH_SEED   fixed UUIDs for root.img
#   MALLEE_DEBIAN_CACHE            keep downloaded .debs here and reuse them
#   MALLEE_DEBIAN_KEEP_WORK=1      keep the work directory (its path is printed)
#   TMPDIR                         where the work directory goes (default /var/tmp;
#                                  needs about 2 GiB)
set -euo pipefail

prog=${0##*/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "$prog: error: $*" >&2; exit 1; }
log() { echo "$prog: [$(date -u +%H:%M:%S)] $*" >&2; }

usage() {
	echo "usage: $prog OUTDIR" >&2
	echo "builds vmlinuz, initrd.img, root.img and manifest.json (Debian 12 + cloud-init) into OUTDIR" >&2
	exit 2
}

[ "$#" -eq 1 ] || usage
case "$1" in -h|--help) usage ;; esac
outdir=$1

suite=${MALLEE_DEBIAN_SUITE:-bookworm}
mirror=${MALLEE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${MALLEE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
snapshot=${MALLEE_DEBIAN_SNAPSHOT:-}
pin_manifest=${MALLEE_DEBIAN_PIN_MANIFEST:-}
kernel_pkg=${MALLEE_DEBIAN_KERNEL:-linux-image-cloud-amd64}
extra_packages=${MALLEE_DEBIAN_EXTRA_PACKAGES:-}
root_size=${MALLEE_DEBIAN_ROOT_SIZE:-1536M}
fs_uuid=${MALLEE_DEBIAN_FS_UUID:-6d616c6c-6565-4465-a269-616e31320000}
fs_hash_seed=${MALLEE_DEBIAN_FS_HASH_SEED:-6d616c6c-6565-4465-8273-656564000000}
cache=${MALLEE_DEBIAN_CACHE:-}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
rootfs_src=$here/rootfs
mke2fs_conf=$here/mke2fs.conf
fs_label=debian-root
cmdline="root=/dev/vda console=ttyS0"

# Installed besides debootstrap's minbase (without Recommends). cloud-init pulls in
# python3, isc-dhcp-client (its ephemeral DHCP at init-local), locales, procps, fdisk, ...
packages="systemd-sysv udev dbus systemd-resolved iproute2 iputils-ping netbase
	ca-certificates e2fsprogs initramfs-tools zstd openssh-server sudo cloud-init
	cloud-guest-utils $extra_packages"
# forced into the initramfs (MODULES=most adds the rest of the storage drivers)
initrd_modules="virtio_pci virtio_blk virtio_net virtio_scsi ext4"

if [ -n "$snapshot" ]; then
	case "$snapshot" in
		[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z) ;;
		*) die "MALLEE_DEBIAN_SNAPSHOT must look like 20250520T000000Z" ;;
	esac
	mirror=http://snapshot.debian.org/archive/debian/$snapshot
	[ "$security_mirror" = none ] || security_mirror=http://snapshot.debian.org/archive/debian-security/$snapshot
fi

# --- checks -------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
export PATH=$PATH:/usr/sbin:/sbin
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $1($2)"; }
need debootstrap debootstrap
need chroot coreutils; need mount mount; need umount mount
need mke2fs e2fsprogs; need debugfs e2fsprogs; need e2fsck e2fsprogs
for t in sha256sum stat touch truncate install sort mktemp cp ln; do need "$t" coreutils; done
need find findutils; need xargs findutils; need sed sed; need grep grep; need awk mawk
[ -z "$pin_manifest" ] || need python3 python3
[ -z "$missing" ] || die "missing host tools (package in brackets):$missing — install them with apt-get install"
[ -f "$keyring" ] || die "missing $keyring (apt-get install debian-archive-keyring)"
[ -d "$rootfs_src" ] || die "missing $rootfs_src"
[ -f "$mke2fs_conf" ] || die "missing $mke2fs_conf"
[ -z "$pin_manifest" ] || [ -f "$pin_manifest" ] || die "no such file: $pin_manifest"
case "${SOURCE_DATE_EPOCH:-0}" in ''|*[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds" ;; esac

export LC_ALL=C TZ=UTC
umask 022
build_start=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/var/tmp}/mallee-debian.XXXXXX")
root=$work/root

# Every mount this script makes is below $work; they all go before anything is deleted.
unmount_all() {
	local m
	awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done
}
cleanup() {
	local rc=$?
	unmount_all
	if awk -v w="$work/" 'index($2, w) == 1 {found=1} END {exit !found}' /proc/mounts; then
		log "mounts remain below $work: not deleting it"
	elif [ "${MALLEE_DEBIAN_KEEP_WORK:-0}" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/out"

# Runs a command in the image, with a clean environment.
in_root() {
	chroot "$root" /usr/bin/env -i \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C TZ=UTC \
		DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
		SOURCE_DATE_EPOCH="$epoch" "$@"
}
mount_root() {
	mount -t proc proc "$root/proc"
	mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
	if [ -n "$cache" ]; then
		mount --bind "$cache" "$root/var/cache/apt/archives"
	fi
}
apt_in_root() {
	in_root apt-get -q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# provisional time stamp for the installation (shadow's "last changed", the first
# initramfs); replaced below once the packages are known
epoch=${SOURCE_DATE_EPOCH:-$build_start}

# --- 1. debootstrap -----------------------------------------------------------------------
if [ -n "$cache" ]; then
	mkdir -p "$cache"
	cache=$(cd "$cache" && pwd)
fi
log "debootstrap --variant=minbase $suite from $mirror"
if ! debootstrap --variant=minbase --arch=amd64 --components=main --merged-usr \
	--keyring="$keyring" ${cache:+--cache-dir="$cache"} \
	"$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1; then
	tail -n 30 "$work/debootstrap.log" >&2
	[ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
	die "debootstrap failed (log: $work/debootstrap.log; MALLEE_DEBIAN_KEEP_WORK=1 keeps it)"
fi

# --- 2. apt in the image ----------------------------------------------------------------------
# The build's sources (perhaps a snapshot); the image gets deb.debian.org's at the end.
opt=""
[ -z "$snapshot" ] || opt="[check-valid-until=no] "
{
	echo "deb ${opt}$mirror $suite main"
	echo "deb ${opt}$mirror $suite-updates main"
	[ "$security_mirror" = none ] || echo "deb ${opt}$security_mirror $suite-security main"
} > "$root/etc/apt/sources.list"
# no daemons start while packages are installed
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
# the image's own files (dpkg's excludes first, so that they apply to what follows)
cp -R "$rootfs_src/." "$root/"
find "$rootfs_src" -mindepth 1 -printf '%P\n' | while read -r p; do
	if [ -d "$root/$p" ]; then chmod 0755 "$root/$p"; else chmod 0644 "$root/$p"; fi
done
# debootstrap copied the host's resolver configuration for the build; it stays until
# systemd-resolved replaces it

pins=""
if [ -n "$pin_manifest" ]; then
	# apt preferences with priority 1001 make apt install (or downgrade to) exactly these
	# versions; the same apt-get commands as without pins then give the same result
	pins=$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
for p in m["packages"]:
    print("Package: %s\nPin: version %s\nPin-Priority: 1001\n" % (p["name"], p["version"]))' "$pin_manifest") \
		|| die "cannot read the packages of $pin_manifest"
	echo "$pins" > "$root/etc/apt/preferences.d/mallee-pins"
	log "pinning $(grep -c '^Package:' "$root/etc/apt/preferences.d/mallee-pins") package versions from $pin_manifest"
fi

mount_root
log "apt-get update, dist-upgrade"
apt_in_root update > "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt-get update failed"; }
apt_in_root dist-upgrade >> "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; die "apt-get dist-upgrade failed"; }

# Everything is downloaded first: once systemd-resolved is installed, the image's
# /etc/resolv.conf points at a resolver that does not run in the chroot.
# shellcheck disable=SC2086
apt_in_root install --download-only $packages "$kernel_pkg" >> "$work/apt.log" 2>&1 \
	|| { tail -n 30 "$work/apt.log" >&2; die "downloading the packages failed${pins:+ (are the pinned versions still in the archive? try MALLEE_DEBIAN_SNAPSHOT)}"; }
log "installing: $(echo $packages)"
# initramfs-tools first, so that its module list is in place before the kernel arrives
# shellcheck disable=SC2086
apt_in_root install $packages >> "$work/apt.log" 2>&1 \
	|| { tail -n 30 "$work/apt.log" >&2; die "apt-get install failed${pins:+ (are the pinned versions still in the archive? try MALLEE_DEBIAN_SNAPSHOT)}"; }
for m in $initrd_modules; do echo "$m"; done >> "$root/etc/initramfs-tools/modules"
log "installing $kernel_pkg"
apt_in_root install "$kernel_pkg" >> "$work/apt.log" 2>&1 \
	|| { tail -n 30 "$work/apt.log" >&2; die "apt-get install $kernel_pkg failed"; }
apt_in_root autoremove --purge >> "$work/apt.log" 2>&1 || true

# the package list, with each .deb's SHA-256 as the archive publishes it
in_root dpkg-query -W -f '${db:Status-Abbrev}|${Package}|${Version}\n' | awk -F'|' '$1 ~ /^ii/ {print $2 "|" $3}' \
	| sort > "$work/packages.txt"
if [ -n "$pins" ]; then
	want=$(python3 -c '
import json, sys
for p in json.load(open(sys.argv[1]))["packages"]:
    print("%s|%s" % (p["name"], p["version"]))' "$pin_manifest" | sort)
	if [ "$want" != "$(cat "$work/packages.txt")" ]; then
		diff <(echo "$want") "$work/packages.txt" >&2 || true
		die "installed packages differ from $pin_manifest (< wanted, > installed)"
	fi
fi
# shellcheck disable=SC2046
in_root apt-cache show --no-all-versions $(sed 's/|/=/' "$work/packages.txt") 2>/dev/null \
	| awk '/^Package: /{p=$2} /^Version: /{v=$2} /^SHA256: /{if (!((p "|" v) in s)) s[p "|" v]=$2}
		END {for (k in s) print k "|" s[k]}' | sort > "$work/sha256.txt"
awk -F'|' 'NR==FNR {s[$1 "|" $2]=$3; next} {print $1 "|" $2 "|" ((($1 "|" $2) in s) ? s[$1 "|" $2] : "")}' \
	"$work/sha256.txt" "$work/packages.txt" > "$work/packages.full"
if awk -F'|' '$3 == "" {bad=1; print "no SHA256 for " $1 " " $2 > "/dev/stderr"} END {exit !bad}' "$work/packages.full"; then
	die "the archive does not describe every installed package"
fi
log "$(wc -l < "$work/packages.full") packages installed"

# --- 3. the time stamp ------------------------------------------------------------------------
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	# the newest time stamp of a regular file shipped in a package (dpkg keeps the
	# package's times; anything from before the build start, so untouched since)
	epoch=$(cat "$root/var/lib/dpkg/info/"*.list | sort -u | sed "s|^|$root|" \
		| { xargs -d '\n' stat -c '%F|%Y' 2>/dev/null || true; } \
		| awk -F'|' -v s="$build_start" '$1 == "regular file" && $2 < s && $2 > m {m = $2} END {print m}')
	[ -n "$epoch" ] || die "cannot derive SOURCE_DATE_EPOCH from the packages"
fi
export SOURCE_DATE_EPOCH=$epoch
log "SOURCE_DATE_EPOCH=$epoch ($(date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S') UTC)"

# --- 4. configuration -------------------------------------------------------------------------
kvers=$(find "$root/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
[ "$(echo "$kvers" | wc -l)" -eq 1 ] && [ -n "$kvers" ] || die "expected one kernel in the image, found: ${kvers:-none}"
kver=$kvers
kernel_name=linux-image-$kver
kernel_version=$(awk -F'|' -v p="$kernel_name" '$1 == p {print $2}' "$work/packages.full")

in_root systemctl enable systemd-networkd.service systemd-resolved.service \
	mallee-ssh-hostkeys.service > "$work/systemctl.log" 2>&1 \
	|| { cat "$work/systemctl.log" >&2; die "systemctl enable failed"; }

# The locale cloud-init's Debian support sets by default (en_US.UTF-8): generated here,
# because Debian's locale-gen ignores the locale cloud-init names and only builds those
# enabled in /etc/locale.gen (else cc_locale fails: "invalid locale settings"), and made
# the system's LANG, so that cloud-init has nothing to regenerate at first boot.
sed -i 's/^# *\(en_US\.UTF-8 UTF-8\)$/\1/' "$root/etc/locale.gen"
grep -qx 'en_US.UTF-8 UTF-8' "$root/etc/locale.gen" || die "no en_US.UTF-8 in the image's /etc/locale.gen"
in_root locale-gen > "$work/locale.log" 2>&1 || { cat "$work/locale.log" >&2; die "locale-gen failed"; }
in_root update-locale LANG=en_US.UTF-8 || die "update-locale failed"

# shadow's "last password change" is the day of the build: make it the epoch's day
day=$(( epoch / 86400 ))
for f in shadow shadow-; do
	[ -f "$root/etc/$f" ] || continue
	awk -F: -v OFS=: -v d="$day" '$3 != "" {$3 = d} {print}' "$root/etc/$f" > "$work/$f.new"
	cat "$work/$f.new" > "$root/etc/$f"
done

log "update-initramfs for $kver"
in_root update-initramfs -u -k "$kver" > "$work/initramfs.log" 2>&1 \
	|| { cat "$work/initramfs.log" >&2; die "update-initramfs failed"; }
in_root lsinitramfs "/boot/initrd.img-$kver" > "$work/initrd.list"
for m in $initrd_modules; do
	if ! grep -q "/$m\.ko" "$work/initrd.list" \
		&& ! grep -qx "kernel/.*/$m\.ko" "$root/usr/lib/modules/$kver/modules.builtin"; then
		die "module $m is neither in the initramfs nor built into $kver"
	fi
done

# --- 5. clean up the tree -------------------------------------------------------------------
unmount_all   # (MALLEE_DEBIAN_CACHE is bind-mounted on /var/cache/apt/archives until here)
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/preferences.d/mallee-pins"
{
	echo "deb http://deb.debian.org/debian $suite main"
	echo "deb http://deb.debian.org/debian $suite-updates main"
	[ "$security_mirror" = none ] || echo "deb http://deb.debian.org/debian-security $suite-security main"
} > "$root/etc/apt/sources.list"
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/cache/ldconfig/aux-cache" \
	"$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old "$root/debootstrap" \
	"$root/var/lib/dbus/machine-id" "$root/etc/ssh/ssh_host_"* \
	"$root/var/lib/systemd/random-seed" "$root/root/.bash_history" \
	"$root/tmp/"* "$root/var/tmp/"* "$root/run/"*
# apt's caches as a fresh apt leaves them (the same with or without MALLEE_DEBIAN_CACHE)
rm -rf "$root/var/cache/apt/archives" && mkdir -p "$root/var/cache/apt/archives"
in_root install -d -m 0700 -o _apt -g root /var/cache/apt/archives/partial /var/lib/apt/lists/partial
find "$root/var/log" -type f -delete
# debootstrap's base was unpacked before dpkg's excludes existed: apply them to it too
find "$root/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
find "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" -mindepth 1 -delete 2>/dev/null || true
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
# systemd makes the machine id at first boot (an empty file means "not yet")
: > "$root/etc/machine-id"
# systemd-resolved's stub, as its package sets it up (the build used the host's resolver)
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
cat > "$root/etc/mallee-release" <<EOF
NAME="mallee Debian guest"
SUITE=$suite
KERNEL=$kver
KERNEL_PACKAGE=$kernel_name=$kernel_version
CLOUD_INIT_PACKAGE=cloud-init=$(awk -F'|' '$1 == "cloud-init" {print $2}' "$work/packages.full")
SOURCE_DATE_EPOCH=$epoch
EOF
chmod 0644 "$root/etc/mallee-release"

# every time stamp is the epoch (-h: symbolic links themselves)
find "$root" -xdev -exec touch -h -d "@$epoch" {} +
# debugfs takes "quoted" arguments (no escapes): names with a quote or a line break
# cannot be passed
if [ -n "$(find "$root" -xdev -name $'*["\n]*' -print -quit)" ]; then
	die "file names with quotes or line breaks (debugfs commands would break): $(find "$root" -xdev -name $'*["\n]*' | head -3)"
fi

# --- 6. vmlinuz, initrd.img ------------------------------------------------------------------
install -m 0644 "$root/boot/vmlinuz-$kver" "$work/out/vmlinuz"
install -m 0644 "$root/boot/initrd.img-$kver" "$work/out/initrd.img"

# --- 7. root.img ----------------------------------------------------------------------------
log "writing root.img ($root_size)"
truncate -s "$root_size" "$work/out/root.img"
MKE2FS_CONFIG=$mke2fs_conf E2FSPROGS_FAKE_TIME=$epoch \
	mke2fs -q -F -t ext4 -L "$fs_label" -m 0 -U "$fs_uuid" \
	-E "hash_seed=$fs_hash_seed,root_owner=0:0,nodiscard" \
	-d "$root" "$work/out/root.img" >&2
# mke2fs -d copies each file's ctime and atime from the tree, and the host cannot set a
# ctime: give every inode the epoch with debugfs instead
{
	for p in / /lost+found; do echo "sif $p ctime @$epoch"; echo "sif $p atime @$epoch"; done
	(cd "$root" && find . -xdev -mindepth 1 -printf '%P\n' | sort) \
		| awk -v e="$epoch" '{printf "sif \"/%s\" ctime @%s\nsif \"/%s\" atime @%s\n", $0, e, $0, e}'
} > "$work/debugfs.cmds"
E2FSPROGS_FAKE_TIME=$epoch debugfs -w -f "$work/debugfs.cmds" "$work/out/root.img" \
	> "$work/debugfs.log" 2>&1 || { tail -n 20 "$work/debugfs.log" >&2; die "debugfs failed"; }
if grep -v -e '^debugfs [0-9]' -e '^debugfs: sif ' "$work/debugfs.log" > "$work/debugfs.err"; then
	head -n 20 "$work/debugfs.err" >&2
	die "debugfs reported problems while fixing the time stamps"
fi
E2FSPROGS_FAKE_TIME=$epoch e2fsck -fn "$work/out/root.img" > "$work/e2fsck.log" 2>&1 \
	|| { cat "$work/e2fsck.log" >&2; die "root.img does not pass e2fsck"; }
used=$(awk '/ blocks$/ {split($(NF-1), a, "/"); print a[1] " of " a[2] " blocks"}' "$work/e2fsck.log" | tail -n 1)
log "root.img: $used (4 KiB) used"

# --- 8. manifest.json ---------------------------------------------------------------------------
touch -d "@$epoch" "$work/out/vmlinuz" "$work/out/initrd.img" "$work/out/root.img"
json_entry() { # json_entry NAME -> one "files" element, as guest/build.sh writes it
	local f=$work/out/$1
	printf '    {"name": "%s", "size": %s, "digest": "sha256:%s"}' \
		"$1" "$(stat -c %s "$f")" "$(sha256sum "$f" | awk '{print $1}')"
}
{
	echo "{"
	echo '  "name": "debian-12",'
	echo '  "format": 1,'
	echo "  \"kernel_release\": \"$kver\","
	echo "  \"cmdline\": \"$cmdline\","
	echo "  \"source_date_epoch\": $epoch,"
	echo '  "packages": ['
	awk -F'|' '{printf "%s    {\"name\": \"%s\", \"version\": \"%s\", \"sha256\": \"%s\"}", (NR > 1 ? ",\n" : ""), $1, $2, $3}
		END {print ""}' "$work/packages.full"
	echo '  ],'
	echo '  "files": ['
	json_entry vmlinuz; echo ","
	json_entry initrd.img; echo ","
	json_entry root.img; echo
	echo '  ]'
	echo "}"
} > "$work/out/manifest.json"
touch -d "@$epoch" "$work/out/manifest.json"

# --- 9. publish -----------------------------------------------------------------------------------
# Each file is renamed into place; manifest.json goes last, so a directory with a
# manifest always describes complete files.
mkdir -p "$outdir"
rm -f "$outdir/manifest.json"
for f in vmlinuz initrd.img root.img manifest.json; do
	cp -p --sparse=always "$work/out/$f" "$outdir/.$f.new"
	mv -f "$outdir/.$f.new" "$outdir/$f"
done
log "done in $(( $(date +%s) - build_start )) s: $(cd "$outdir" && pwd)"
for f in vmlinuz initrd.img root.img manifest.json; do
	printf '  %-14s %11s bytes\n' "$f" "$(stat -c %s "$outdir/$f")" >&2
done
