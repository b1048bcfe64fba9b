#!/usr/bin/env bash
# Build sockmesh's OCI image (the one deploy/ runs) from Debian packages, without any registry:
#   debootstrap --variant=minbase (the Debian mirror this machine's apt uses) + the runtime libraries the addon links
#   (libbpf1, libelf1, zlib1g) + bpftool (meshctl doctor) + Node.js + the built tree (dist/, build/Release/*.node,
#   build/bpf/*.o, node_modules without devDependencies), committed with buildah and written as an OCI archive.
#
# Node.js: package.json wants node >= 20. Debian 12's nodejs is 18, so on bookworm the image gets the node binary
# this machine runs (`--node host`; checked inside the image before committing: it must start there and be >= 20).
# From trixie on, Debian's own nodejs is 20+ and `--node debian` installs it (the default for suites other than
# bookworm). Either way the addon in build/Release must have been built against the same suite's libbpf/glibc (build
# on the machine whose suite you pick: bookworm here, trixie on the Vagrant VMs).
#
#   scripts/image.sh                     # -> build/image/sockmesh-<version>.oci.tar, and localhost/sockmesh:<version>
#   scripts/image.sh --suite trixie      # on a trixie host (the Vagrant VMs)
#   podman load -i build/image/sockmesh-0.1.0.oci.tar
#
# Needs root (debootstrap, buildah mount), debootstrap, buildah, and a built tree (npm ci or npm run build).
# Timing on this project's 2-vCPU CI VMs is in the README ("Kubernetes"); --cache keeps the downloaded .debs, so a
# rebuild does not download them again.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(node -p "require('$here/package.json').version")"
suite=bookworm
node_from=""
tag=""
out=""
cache=""
mirror=""

die() { echo "image.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite="${2:?--suite needs a Debian suite name}"; shift 2 ;;
    --node) node_from="${2:?--node needs host or debian}"; shift 2 ;;
    --tag) tag="${2:?--tag needs an image name}"; shift 2 ;;
    --out) out="${2:?--out needs a file name}"; shift 2 ;;
    --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
    --mirror) mirror="${2:?--mirror needs a URL}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
# bookworm's nodejs (18) is below package.json's engines; later suites ship 20+.
[ -n "$node_from" ] || { [ "$suite" = bookworm ] && node_from=host || node_from=debian; }
case "$node_from" in host|debian) ;; *) die "--node $node_from: expected 'host' or 'debian'" ;; esac
tag="${tag:-localhost/sockmesh:$version}"
out="${out:-$here/build/image/sockmesh-$version.oci.tar}"

# The mirror apt already uses here (deb822 .sources first, then one-line lists), else Debian's CDN.
if [ -z "$mirror" ]; then
  mirror="$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'; \
               grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } \
             | grep -E '/debian/?$' | head -1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

[ "$(id -u)" = 0 ] || die "needs root (debootstrap builds a root file system; buildah mounts the container's)"
for tool in debootstrap buildah; do command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install $tool)"; done
for f in dist/agent/main.js dist/cli/meshctl.js dist/controlplane/main.js build/Release/sockmesh.node build/Release/sockmesh_netio.node; do
  [ -f "$here/$f" ] || die "$here/$f is missing: build the tree first (npm ci, or npm run build)"
done
ls "$here"/build/bpf/*.bpf.o >/dev/null 2>&1 || die "$here/build/bpf/*.bpf.o missing: build the tree first (npm ci, or npm run build)"
[ -d "$here/node_modules" ] || die "$here/node_modules is missing (npm ci)"

start=$(date +%s)
ctr=""
stage="$(mktemp -d /tmp/sockmesh-image.XXXXXX)"
cleanup() {
  [ -n "$ctr" ] && { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
  rm -rf "$stage"
}
trap cleanup EXIT

# The production node_modules: a copy of the installed tree pruned of devDependencies by npm itself (offline, from the
# lockfile: nothing is downloaded, and the versions are exactly the tested ones). Install scripts are not run: the
# addon comes built from build/Release.
echo "image.sh: node_modules without devDependencies" >&2
mkdir -p "$stage/app"
cp "$here/package.json" "$here/package-lock.json" "$stage/app/"
cp -a "$(readlink -f "$here/node_modules")" "$stage/app/node_modules"
(cd "$stage/app" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --offline >/dev/null)

ctr="$(buildah from scratch)"
root="$(buildah mount "$ctr")"
pkgs="libbpf1,libelf1,zlib1g,bpftool,ca-certificates"
[ "$node_from" = debian ] && pkgs="$pkgs,nodejs"
echo "image.sh: debootstrap $suite (minbase + $pkgs) from $mirror" >&2
boot=(debootstrap --variant=minbase --include="$pkgs" "$suite" "$root" "$mirror")
if [ -n "$cache" ]; then
  # A tarball of the .debs debootstrap chose (made once, then unpacked instead of downloaded).
  mkdir -p "$cache"
  debs="$cache/debootstrap-$suite-$(echo "$pkgs" | md5sum | cut -c1-8).tgz"
  [ -f "$debs" ] || debootstrap --variant=minbase --include="$pkgs" --make-tarball="$debs" "$suite" "$stage/tarball" "$mirror" >"$stage/debootstrap.log" 2>&1 \
    || { tail -20 "$stage/debootstrap.log" >&2; die "debootstrap --make-tarball failed"; }
  boot=(debootstrap --variant=minbase --include="$pkgs" --unpack-tarball="$debs" "$suite" "$root" "$mirror")
fi
"${boot[@]}" >"$stage/debootstrap.log" 2>&1 || { tail -20 "$stage/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
# No apt state or downloaded packages in the image: it is never updated in place, only rebuilt.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/usr/share/doc "$root"/usr/share/man

if [ "$node_from" = host ]; then
  install -m 0755 "$(readlink -f "$(command -v node)")" "$root/usr/local/bin/node"
fi
# The node in the image must start there (its libraries are the suite's) and satisfy package.json's engines.
node_version="$(chroot "$root" node --version 2>&1)" || die "node does not run inside the $suite image: $node_version"
[ "$(echo "$node_version" | sed -E 's/^v([0-9]+).*/\1/')" -ge 20 ] || die "node $node_version in the image; sockmesh needs >= 20 (use --node host)"

app="$root/opt/sockmesh"
mkdir -p "$app/build/Release" "$app/build/bpf"
# binding.gyp too: it is how the programs find the project root (agent/addon.ts), and so build/.
cp -a "$here/dist" "$here/binding.gyp" "$stage/app/package.json" "$stage/app/node_modules" "$app/"
cp "$here"/build/Release/sockmesh.node "$here"/build/Release/sockmesh_netio.node "$app/build/Release/"
cp "$here"/build/bpf/*.bpf.o "$app/build/bpf/"
# The three programs on PATH, with their V8 flags (agent/runtime.ts AGENT_NODE_FLAGS, CONTROLPLANE_NODE_FLAGS; dist/'s shebangs use
# `env -S`, which works too, but a wrapper keeps `command:` in the manifests short and independent of that).
wrapper() {
  printf '#!/bin/sh\nexec node %s /opt/sockmesh/dist/%s "$@"\n' "$2" "$3" >"$root/usr/local/bin/$1"
  chmod 0755 "$root/usr/local/bin/$1"
}
wrapper sockmesh-agent '--max-semi-space-size=8 --min-semi-space-size=8 --v8-pool-size=1' agent/main.js
wrapper sockmesh-controlplane '' controlplane/main.js
wrapper meshctl '' cli/meshctl.js
# The addon must load inside the image (libbpf1 and libelf1 of the suite, the node found above), and each program start.
chroot "$root" node -e "require('/opt/sockmesh/build/Release/sockmesh.node'); require('/opt/sockmesh/build/Release/sockmesh_netio.node')" \
  || die "the addon does not load inside the $suite image (built against another suite's libraries? rebuild on a $suite host)"
for program in sockmesh-agent sockmesh-controlplane meshctl; do
  chroot "$root" "$program" --version >/dev/null || die "$program does not start inside the image"
done

# What the image was built from: test/kernel/image.test.ts computes the same digest of the tree and refuses to test an
# image built from other code.
tree="$(cd "$here" && { find dist -type f -name '*.js'; ls build/Release/sockmesh.node build/Release/sockmesh_netio.node build/bpf/*.bpf.o; } \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64)"
buildah config \
  --workingdir /opt/sockmesh \
  --label io.sockmesh.tree="$tree" \
  --entrypoint '["/usr/local/bin/sockmesh-agent"]' \
  --env NODE_ENV=production \
  --label org.opencontainers.image.title=sockmesh \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.description="sockmesh node agent, control plane and meshctl (Debian $suite, node $node_version)" \
  "$ctr"
buildah umount "$ctr" >/dev/null
buildah commit --quiet --format oci --rm "$ctr" "$tag" >/dev/null
ctr=""
mkdir -p "$(dirname "$out")"
rm -f "$out"
buildah push --quiet "$tag" "oci-archive:$out:$tag" >/dev/null
echo "image.sh: $tag -> $out ($(du -h "$out" | cut -f1), $(( $(date +%s) - start )) s)" >&2
