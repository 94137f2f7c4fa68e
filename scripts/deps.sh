#!/usr/bin/env bash
# Installs the system packages the build and the tests need, once.
set -euo pipefail
# protobuf-compiler: make generate; openssl: certificate checks in the tests;
# containerd, runc: the containerd executor; busybox-static: the test and demo
# images; docker-registry, skopeo: a registry on loopback for the pull tests;
# nftables, iproute2: task networking; curl: the README's demo.
pkgs=(protobuf-compiler openssl containerd runc busybox-static docker-registry skopeo nftables iproute2 curl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "missing packages: ${missing[*]}; run as root or install them with apt-get" >&2
		exit 1
	fi
	echo "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
