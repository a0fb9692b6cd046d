#!/usr/bin/env bash
# Writes the NATS side of a mesh's security: two users with the subject
# permissions of their role, as an `authorization` block for nats-server.
#
#   bootstrap/nats-auth.sh CLUSTER DIR
#
# Creates (mode 600, kept if they exist) DIR/node.password and
# DIR/client.password, and writes DIR/auth.conf, which a nats-server
# configuration includes with `include auth.conf`. Roles:
#   node    (user mesh-node):   what a mesh-node needs: the cluster's own
#                               subjects mesh.CLUSTER.>, JetStream and its
#                               key-value buckets, replies to inboxes
#   client  (user mesh-client): only the gateway's call subjects
#                               (mesh.CLUSTER.gateway and
#                               mesh.CLUSTER.node.*.gateway), and replies
# A client can neither publish nor read announcements, goodbyes, operator
# requests or the ownership and state buckets. Operators (meshctl) use the
# node role. Nodes take --nats-user mesh-node --nats-password-file
# DIR/node.password; TLS to NATS is set in the server's own `tls` block
# and on nodes with --nats-ca (and --nats-cert/--nats-key if the server
# verifies clients).
set -euo pipefail

usage() {
	sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

[ $# -eq 2 ] || {
	usage >&2
	exit 2
}
cluster=$1 dir=$2
[[ $cluster =~ ^[a-z0-9_-]{1,64}$ ]] ||
	{
		echo "nats-auth.sh: cluster \"$cluster\": use lowercase letters, digits, '-' or '_'" >&2
		exit 2
	}
mkdir -p "$dir"

password() {
	local file=$1
	if [ ! -s "$file" ]; then
		(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
	fi
	cat "$file"
}

node_password=$(password "$dir/node.password")
client_password=$(password "$dir/client.password")

(
	umask 077
	cat >"$dir/auth.conf" <<EOF
# Users and subject permissions of agent-mesh cluster "$cluster"
# (written by bootstrap/nats-auth.sh).
authorization {
  users = [
    {
      user: mesh-node
      password: "$node_password"
      permissions: {
        publish: {
          allow: ["mesh.$cluster.>", "_INBOX.>", "\$JS.API.>", "\$JS.ACK.>", "\$JS.FC.>",
                  "\$KV.mesh-$cluster-owners.>", "\$KV.mesh-$cluster-state.>",
                  "\$KV.mesh-$cluster-roster.>"]
        }
        subscribe: {
          allow: ["mesh.$cluster.>", "_INBOX.>",
                  "\$KV.mesh-$cluster-owners.>", "\$KV.mesh-$cluster-state.>",
                  "\$KV.mesh-$cluster-roster.>"]
        }
      }
    }
    {
      user: mesh-client
      password: "$client_password"
      permissions: {
        publish: {
          allow: ["mesh.$cluster.gateway", "mesh.$cluster.node.*.gateway"]
        }
        subscribe: {
          allow: ["_INBOX.>"]
        }
      }
    }
  ]
}
EOF
)
echo "nats-auth.sh: $dir/auth.conf (users mesh-node, mesh-client; passwords in $dir)"
