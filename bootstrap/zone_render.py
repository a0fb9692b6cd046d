"""What add-zone.py writes on a host: node and NATS configs, systemd units.

Pure functions of the inventory and the arguments, so that the same input
always gives the same bytes (which is what makes a second run a no-op).
Extend the NATS server configuration in `nats_config` only: every server of
the cluster gets its text from there.
"""

import dataclasses
import json

NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_MONITOR_PORT = 8222
LINK_PORT = 7400
METRICS_PORT = 9400
#: How long a NATS server in lame duck mode lets its clients move away.
NATS_LAME_DUCK = "30s"
#: Keys of node.toml this script decides; [node] in the inventory may not.
NODE_KEYS_SET_BY_SCRIPT = frozenset({
    "cluster", "name", "zone", "kind", "capabilities", "nats", "listen", "advertise",
    "data_dir", "secret_file", "kv_replicas", "metrics_listen", "topology",
    "insecure", "tls_ca", "tls_cert", "tls_key", "nats_user", "nats_password_file", "nats_ca"})

#: The ownership lease of nodes spread over zones (see node_config).
ZONE_LEASE = "15s"

HEADER = "# Written by bootstrap/add-zone.py; a later run puts back any hand edit.\n"


@dataclasses.dataclass
class Host:
    """One inventory host."""
    name: str
    address: str
    kind: str
    capabilities: list
    zone: str
    nats: bool
    ssh: str
    netns: str


@dataclasses.dataclass
class Context:
    """What every host's files depend on."""
    cluster: str
    nats_cluster: str
    routes: list
    hosts: list
    kv_replicas: int
    shutdown_timeout: str
    node_extra: dict
    #: Whether a topology file goes to every node (--topology).
    topology: bool = False
    #: Links: "tls" (certificates under /etc/mesh/tls) or "insecure".
    links: str = "tls"
    #: The `authorization` block of bootstrap/nats-auth.sh, or "" (none).
    nats_auth: str = ""
    #: Whether clients reach NATS over TLS (the host's certificate).
    nats_tls: bool = False


class Layout:
    """Where things live on a host; under `root` in local mode."""

    def __init__(self, root, local):
        self.root = root
        self.local = local
        self.node_config = root + "/etc/mesh/node.toml"
        self.nats_config = root + "/etc/mesh/nats.conf"
        self.secret = root + "/etc/mesh/secret"
        self.topology = root + "/etc/mesh/topology.toml"
        self.nats_password = root + "/etc/mesh/nats.password"
        self.tls_ca = root + "/etc/mesh/tls/ca.crt"
        self.tls_cert = root + "/etc/mesh/tls/node.crt"
        self.tls_key = root + "/etc/mesh/tls/node.key"
        self.node_unit = root + "/etc/systemd/system/mesh-node.service"
        self.nats_unit = root + "/etc/systemd/system/mesh-nats.service"
        self.node_data = root + "/var/lib/mesh"
        self.nats_data = root + "/var/lib/mesh-nats"

    def binary(self, name):
        return f"{self.root}/opt/mesh/bin/{name}"

    @staticmethod
    def unit_name(service):
        return f"mesh-{service}.service"

    def stamp(self, service):
        """Settings the running service was started with (see add-zone.py)."""
        folder = "/run/mesh" if self.local else "/etc/mesh"
        return f"{self.root}{folder}/{service}.stamp"

    def pid_file(self, service):
        return f"{self.root}/run/mesh/{service}.pid"

    def log_file(self, service):
        return f"{self.root}/var/log/mesh/{service}.log"

    def marker(self, service):
        """A part of the service's command line that only it has."""
        return self.nats_config if service == "nats" else self.node_config

    def data_dirs(self, service):
        return [self.nats_data] if service == "nats" else [self.node_data]


def toml_value(value):
    """A TOML literal of a string, number, bool or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings are valid TOML basic strings.
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} in TOML")


def nats_host_of(hosts, host):
    """The NATS server a host's node talks to: one in its zone."""
    in_zone = [h for h in hosts if h.zone == host.zone and h.nats]
    return in_zone[0]


def node_config(ctx, host, layout):
    """The node's TOML (keys as in mesh/src/config.rs)."""
    nats = [f"nats://{h.address}:{NATS_CLIENT_PORT}"
            for h in ctx.hosts if h.zone == host.zone and h.nats]
    link = f"{host.address}:{LINK_PORT}"
    if ":" in host.address:
        link = f"[{host.address}]:{LINK_PORT}"
    keys = {
        "cluster": ctx.cluster,
        "name": host.name,
        "zone": host.zone,
        "kind": host.kind,
        "capabilities": host.capabilities,
        "nats": nats,
        "listen": link,
        "advertise": link,
        "data_dir": layout.node_data,
        "secret_file": layout.secret,
        "kv_replicas": ctx.kv_replicas,
        "metrics_listen": link.rsplit(":", 1)[0] + f":{METRICS_PORT}",
        # Outlasts a JetStream leader election of the ownership bucket
        # (4 to 9 s) when a zone is lost; [node] in the inventory may
        # shorten it.
        "lease": ZONE_LEASE,
    }
    if ctx.topology:
        keys["topology"] = layout.topology
    if ctx.nats_auth:
        keys.update(nats_user="mesh-node", nats_password_file=layout.nats_password)
    if ctx.nats_tls:
        keys["nats_ca"] = layout.tls_ca
    if ctx.links == "insecure":
        keys["insecure"] = True
    else:
        keys.update(tls_ca=layout.tls_ca, tls_cert=layout.tls_cert, tls_key=layout.tls_key)
    keys.update(sorted(ctx.node_extra.items()))
    return HEADER + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


def nats_config(ctx, host, layout):
    """One NATS server of the cluster spanning zones.

    Every server is tagged with its zone, and JetStream places the replicas
    of a stream (the mesh's KV buckets) on servers of distinct zones
    (`unique_tag`), so a bucket with three replicas survives a lost zone.
    Routes go to the existing cluster and to every new server (a route to
    itself is ignored); servers learn the rest of the cluster from the
    ones they reach.
    """
    region = host.zone.rpartition("-")[0]
    routes = list(ctx.routes) + [f"nats-route://{h.address}:{NATS_ROUTE_PORT}"
                                 for h in ctx.hosts if h.nats]
    q = json.dumps
    lines = [
        f"server_name: {q('nats-' + host.name)}",
        f"server_tags: [{q('az:' + host.zone)}, {q('region:' + region)}]",
        f"listen: {q(f'{host.address}:{NATS_CLIENT_PORT}')}",
        f"http: {q(f'{host.address}:{NATS_MONITOR_PORT}')}",
        f"lame_duck_duration: {q(NATS_LAME_DUCK)}",
        "jetstream {",
        f"  store_dir: {q(layout.nats_data)}",
        f"  unique_tag: {q('az:')}",
        "}",
        "cluster {",
        f"  name: {q(ctx.nats_cluster)}",
        f"  listen: {q(f'{host.address}:{NATS_ROUTE_PORT}')}",
        "  routes: [",
        *[f"    {q(r)}" for r in routes],
        "  ]",
        "}",
    ]
    if ctx.nats_tls:
        lines += ["tls {", f"  cert_file: {q(layout.tls_cert)}",
                  f"  key_file: {q(layout.tls_key)}", "  timeout: 2", "}"]
    if ctx.nats_auth:
        lines.append(ctx.nats_auth.rstrip("\n"))
    return HEADER + "\n".join(lines) + "\n"


def node_command(layout, shutdown_timeout):
    return [layout.binary("mesh-node"), "--config", layout.node_config,
            "--shutdown-timeout", shutdown_timeout]


def nats_command(layout):
    return [layout.binary("nats-server"), "-c", layout.nats_config]


def seconds(duration):
    """Whole seconds of a duration such as 30s, 1m or 500ms (rounded up)."""
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60)):
        if duration.endswith(suffix) and duration[:-len(suffix)].isdigit():
            return -(-int(duration[:-len(suffix)]) * factor // 1)
    raise ValueError(duration)


def node_unit(ctx, host, layout):
    """mesh-node under systemd: SIGTERM is a graceful stop (agents move
    away, a final snapshot) that mesh-node cuts short itself after
    --shutdown-timeout; systemd waits a little longer before SIGKILL."""
    stop_after = int(seconds(ctx.shutdown_timeout)) + 15
    exec_start = " ".join(node_command(layout, ctx.shutdown_timeout))
    after = "network-online.target" + (" mesh-nats.service" if host.nats else "")
    return HEADER + f"""[Unit]
Description=agent-mesh node {host.name} ({host.zone}, cluster {ctx.cluster})
Wants=network-online.target
After={after}

[Service]
Type=simple
User=mesh
Group=mesh
ExecStart={exec_start}
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={stop_after}s
Restart=on-failure
RestartSec=2s
# Exit status 2 is a bad configuration: restarting would not help.
RestartPreventExitStatus=2
Environment=NO_COLOR=1 RUST_LOG=info
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def nats_unit(ctx, host, layout):
    """nats-server under systemd: SIGUSR2 puts it in lame duck mode, so that
    clients move to other servers before it stops; SIGHUP reloads."""
    exec_start = " ".join(nats_command(layout))
    lame_duck = int(seconds(NATS_LAME_DUCK))
    return HEADER + f"""[Unit]
Description=NATS server of agent-mesh cluster {ctx.cluster} ({host.zone})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=mesh
Group=mesh
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGUSR2
TimeoutStopSec={lame_duck + 30}s
Restart=on-failure
RestartSec=2s
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""
