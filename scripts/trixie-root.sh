#!/bin/bash
# Creates (once) and reuses a Debian 13 (trixie) root with Dovecot 2.4 and
# the tools to build the plugin against it. Prints the root's path on stdout.
#
#   FERRY_TRIXIE_ROOT   where the root lives (default /var/cache/ferry-test/trixie)
#   FERRY_TRIXIE_EXTRA  further Debian packages to install into it (space separated)
#   FERRY_TRIXIE_MIRROR the Debian mirror (default: the one /etc/apt/sources.list*
#                       names for the main archive)
#   FERRY_TRIXIE_OWN_DEBOOTSTRAP=1  use trixie's debootstrap even when the
#                       host's knows trixie
#
# Steps: debootstrap --variant=minbase trixie ROOT MIRROR (with trixie's own
# debootstrap, unpacked from the mirror, when the host's does not know
# trixie); a policy-rc.d that exits 101 (package scripts start nothing);
# apt-get install --no-install-recommends of the packages below, with /proc
# mounted only while installing. ROOT/.ready is written last and names the
# installed packages; a caller that finds it with the same list returns at
# once. ROOT.lock (flock) makes concurrent callers wait for one build.
# Needs root and the network to the mirror on first use only.
set -euo pipefail

ROOT=${FERRY_TRIXIE_ROOT:-/var/cache/ferry-test/trixie}
SUITE=trixie
# dovecot-sieve, dovecot-managesieved, dovecot-sqlite: the test suite's Sieve
# modules (tests/test_sieve*.py) and the SQL routing (test_cutover.py, test_runbook.py)
PACKAGES="dovecot-core dovecot-imapd dovecot-lmtpd dovecot-pop3d dovecot-sieve dovecot-managesieved dovecot-sqlite dovecot-dev gcc make libc6-dev ${FERRY_TRIXIE_EXTRA:-}"
# one line, sorted, no duplicates: what .ready records
PACKAGES=$(printf '%s\n' $PACKAGES | sort -u | tr '\n' ' ' | sed 's/ $//')

die() {
	echo "trixie-root: $*" >&2
	exit 1
}
say() { echo "trixie-root: $*" >&2; }

ready() { [ -f "$ROOT/.ready" ] && [ "$(cat "$ROOT/.ready")" = "$PACKAGES" ]; }

if ready; then
	echo "$ROOT"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root to create $ROOT (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

mirror() {
	if [ -n "${FERRY_TRIXIE_MIRROR:-}" ]; then
		echo "$FERRY_TRIXIE_MIRROR"
		return
	fi
	local f uri
	# one-line sources: "deb [opts] URI SUITE COMPONENTS"
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		uri=$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
			if ($(i+1) ~ /^(bookworm|trixie|stable|testing)$/ && $i !~ /security/) { print $i; exit } }' "$f")
		[ -n "$uri" ] && { echo "$uri"; return; }
	done
	# deb822 stanzas: URIs: + Suites: naming the main archive
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
			{ u = ""; s = ""
			  for (i = 1; i <= NF; i++) {
			    if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
			    if ($i ~ /^Suites:/) s = $i }
			  if (u ~ /debian/ && u !~ /security/ && s ~ /(bookworm|trixie|stable|testing)([ \t]|$)/) { print u; exit } }' "$f")
		[ -n "$uri" ] && { echo "$uri"; return; }
	done
	echo "http://deb.debian.org/debian"
}

# Unmounts whatever this script mounted under ROOT (proc; debootstrap's own
# mounts when it stopped halfway).
umount_all() {
	local m
	for m in $(awk -v r="$ROOT/" 'index($5 "/", r) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
}

# Removes a half-made root; refuses when something is still mounted under it
# (rm would go through a bind mount).
wipe() {
	umount_all
	if awk -v r="$ROOT/" 'index($5 "/", r) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
		die "$ROOT has mounts under it; not removing it"
	fi
	rm -rf --one-file-system "$ROOT"
}

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9
# another caller may have finished it while this one waited
if ready; then
	echo "$ROOT"
	exit 0
fi

TMP=$(mktemp -d)
trap 'umount_all; rm -rf "$TMP"' EXIT

MIRROR=$(mirror)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset LD_PRELOAD || true

if [ ! -f "$ROOT/.base" ]; then
	[ -e "$ROOT" ] && { say "removing the half-made $ROOT"; wipe; }
	if [ ! -e "/usr/share/debootstrap/scripts/$SUITE" ] || [ -n "${FERRY_TRIXIE_OWN_DEBOOTSTRAP:-}" ]; then
		# the host's debootstrap is older than trixie: use trixie's own
		say "using $SUITE's own debootstrap; fetching $SUITE's debootstrap from $MIRROR"
		curl -fsSL -o "$TMP/Packages.xz" "$MIRROR/dists/$SUITE/main/binary-all/Packages.xz" ||
			die "cannot fetch $MIRROR/dists/$SUITE/main/binary-all/Packages.xz"
		debpath=$(xz -dc "$TMP/Packages.xz" | awk '/^Package: / { p = $2 } /^Filename: / && p == "debootstrap" && !f { f = $2 } END { print f }')
		[ -n "$debpath" ] || die "no debootstrap package in $SUITE's index on $MIRROR"
		curl -fsSL -o "$TMP/debootstrap.deb" "$MIRROR/$debpath" || die "cannot fetch $MIRROR/$debpath"
		dpkg-deb -x "$TMP/debootstrap.deb" "$TMP/ds"
		export DEBOOTSTRAP_DIR="$TMP/ds/usr/share/debootstrap"
		DEBOOTSTRAP="$TMP/ds/usr/sbin/debootstrap"
	else
		DEBOOTSTRAP=debootstrap
	fi
	say "debootstrap --variant=minbase $SUITE $ROOT $MIRROR (about a minute)"
	if ! "$DEBOOTSTRAP" --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$TMP/debootstrap.log" 2>&1; then
		tail -n 30 "$TMP/debootstrap.log" >&2
		wipe
		die "debootstrap $SUITE failed (log above)"
	fi
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 755 "$ROOT/usr/sbin/policy-rc.d"
	echo "debootstrap --variant=minbase $SUITE $MIRROR" >"$ROOT/.base"
fi

rm -f "$ROOT/.ready"
say "installing into $ROOT: $PACKAGES"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$ROOT/proc"
# shellcheck disable=SC2086
if ! { chroot "$ROOT" apt-get update -q && chroot "$ROOT" apt-get install -y -q --no-install-recommends $PACKAGES; } \
	>"$TMP/apt.log" 2>&1; then
	tail -n 30 "$TMP/apt.log" >&2
	die "apt-get in $ROOT failed (log above); the base stays, run again to retry"
fi
umount_all
chroot "$ROOT" apt-get clean
[ -x "$ROOT/usr/sbin/dovecot" ] && [ -f "$ROOT/usr/lib/dovecot/dovecot-config" ] ||
	die "Dovecot is not installed in $ROOT after apt-get"
say "$(chroot "$ROOT" dovecot --version) in $ROOT"
echo "$PACKAGES" >"$ROOT/.ready"
echo "$ROOT"
