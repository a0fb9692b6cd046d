#!/usr/bin/env bash
# Creates the certificates of a mesh's links: one cluster CA, and one
# certificate per node signed by it (mutual TLS: each node shows its own to
# the peers it dials and to the peers that dial it).
#
#   bootstrap/certs.sh ca DIR                  new CA: DIR/ca.crt, DIR/ca.key
#   bootstrap/certs.sh node DIR NAME [IP...]   DIR/NAME.crt, DIR/NAME.key
#
# A node certificate names the node (DNS:NAME, checked against the name a
# peer announces) and, if given, the IP addresses it listens on. Keep ca.key
# offline once a zone's nodes have their certificates; give each node only
# ca.crt, its own .crt and its own .key (tls_ca, tls_cert, tls_key).
#
# Environment:
#   MESH_CERT_DAYS   validity of node certificates in days (default 825;
#                    a negative value makes an expired one, for tests)
#   MESH_CA_DAYS     validity of the CA in days (default 3650)
set -euo pipefail

usage() {
	sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
	echo "certs.sh: $*" >&2
	exit 2
}

command -v openssl >/dev/null || die "openssl is not installed"

new_ca() {
	local dir=$1
	[ -e "$dir/ca.key" ] && die "$dir/ca.key exists; refusing to replace a CA"
	mkdir -p "$dir"
	(
		umask 077
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
			-out "$dir/ca.key" 2>/dev/null
	)
	openssl req -x509 -new -key "$dir/ca.key" -out "$dir/ca.crt" \
		-days "${MESH_CA_DAYS:-3650}" -subj "/CN=agent-mesh cluster CA" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	echo "certs.sh: CA written to $dir/ca.crt (key $dir/ca.key)"
}

new_node() {
	local dir=$1 name=$2
	shift 2
	[[ $name =~ ^[a-z0-9-]{1,63}$ ]] ||
		die "node name \"$name\": use 1 to 63 lowercase letters, digits or '-'"
	if [ ! -r "$dir/ca.key" ] || [ ! -r "$dir/ca.crt" ]; then
		die "no CA in $dir: run 'certs.sh ca $dir' first"
	fi
	local san="DNS:$name" ip
	for ip in "$@"; do
		[[ $ip =~ ^[0-9a-fA-F:.]+$ ]] || die "not an IP address: \"$ip\""
		san="$san,IP:$ip"
	done
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	(
		umask 077
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
			-out "$dir/$name.key" 2>/dev/null
	)
	openssl req -new -key "$dir/$name.key" -subj "/CN=$name" \
		-out "$tmp/req.csr" 2>/dev/null
	cat >"$tmp/ext.cnf" <<-EOF
		basicConstraints=critical,CA:FALSE
		keyUsage=critical,digitalSignature
		extendedKeyUsage=serverAuth,clientAuth
		subjectAltName=$san
	EOF
	openssl x509 -req -in "$tmp/req.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
		-CAcreateserial -CAserial "$tmp/ca.srl" -days "${MESH_CERT_DAYS:-825}" \
		-extfile "$tmp/ext.cnf" -out "$dir/$name.crt" 2>/dev/null
	echo "certs.sh: $dir/$name.crt ($san), key $dir/$name.key"
}

case "${1:-}" in
ca)
	[ $# -eq 2 ] || {
		usage
		exit 2
	}
	new_ca "$2"
	;;
node)
	[ $# -ge 3 ] || {
		usage
		exit 2
	}
	new_node "$2" "$3" "${@:4}"
	;;
-h | --help)
	usage
	;;
*)
	usage >&2
	exit 2
	;;
esac
