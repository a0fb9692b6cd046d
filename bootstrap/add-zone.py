#!/usr/bin/env python3
"""Adds zones to an agent mesh: NATS server, nodes, systemd units.

  bootstrap/add-zone.py --zone nl-ams-2 --inventory ams2.toml \\
      --cluster prod --secret-file secret --tls-dir mesh-ca --nats-auth nats-auth \\
      --routes nats-route://10.0.0.5:6222,nats-route://10.1.0.5:6222

For every host of the inventory in the zone(s) given with --zone, it:
  1. checks that every host is reachable (nothing is changed otherwise);
  2. installs mesh-node, meshctl and nats-server in /opt/mesh/bin and
     writes /etc/mesh/{node.toml,nats.conf,secret} (and topology.toml with
     --topology, checked first) and the systemd units mesh-nats.service
     and mesh-node.service;
  3. starts the zone's NATS server(s), routed to the existing cluster, and
     waits until they joined it with JetStream;
  4. starts the nodes and waits until each one is ready (/readyz) and seen,
     linked, in the member list;
  5. prints a summary.
Only what differs from the wanted state is changed, so a second run does
nothing and a run that was cut short is finished by running it again.
With no --routes the zones given form a new cluster (give three zones at
once, so that the buckets get replicas in three zones).

Hosts are reached over ssh (root, or --sudo), or with --local DIR each host
is a network namespace of this machine (the inventory's `netns`), with its
files under DIR/<host>/ and its processes started directly instead of by
systemd. --dry-run prints every action without doing it.

Exit status: 0 done, 1 a step failed (the message says how to resume),
2 bad arguments or inventory.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit("add-zone.py: needs Python 3.11 or newer (tomllib)")

# Its helper modules sit next to it; no __pycache__ in the checkout.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zone_render as render  # noqa: E402
from zone_hosts import (  # noqa: E402
    Remote, Stop, lock_local, process_matches, read_pid, read_text, start_local, stop_local,
    write_text)

PROG = "add-zone.py"
#: How long NATS servers may take to join the cluster.
NATS_TIMEOUT = 60.0
#: How long nodes may take to become ready and linked.
NODE_TIMEOUT = 90.0
POLL = 0.25
BINARIES = ("mesh-node", "meshctl", "nats-server")
KINDS = ("elastic-metal", "instance")
HOST_KEYS = {"name", "address", "kind", "capabilities", "zone", "nats", "ssh", "netns"}
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


class BadInput(Exception):
    """A bad argument or inventory entry: exit 2, nothing done."""


def say(text=""):
    print(text, flush=True)


def warn(text):
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ input


def check_zone(zone, where):
    region, _, number = zone.rpartition("-")
    if not region or not number.isdigit() or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", region):
        raise BadInput(f'invalid zone "{zone}" in {where}: expected <region>-<number>, '
                       "such as fr-par-1")


def load_inventory(path, zones):
    """The hosts of `path` that live in one of `zones`, checked."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise BadInput(f"cannot read the inventory {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"inventory {path} is not valid TOML: {e}")
    unknown = set(data) - {"host", "node"}
    if unknown:
        raise BadInput(f"unknown key {sorted(unknown)[0]!r} in inventory {path} "
                       "(expected [[host]] and [node])")
    node_extra = data.get("node", {})
    if not isinstance(node_extra, dict):
        raise BadInput(f"[node] in inventory {path} must be a table")
    for key in render.NODE_KEYS_SET_BY_SCRIPT & set(node_extra):
        raise BadInput(f"[node] key {key!r} in inventory {path} is set by this script")
    entries = data.get("host", [])
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"inventory {path} lists no hosts ([[host]] tables)")
    hosts, names, addresses = [], set(), set()
    for i, entry in enumerate(entries, 1):
        where = f"host #{i} of {path}"
        if not isinstance(entry, dict):
            raise BadInput(f"{where} is not a table")
        if isinstance(entry.get("name"), str):
            where = f"host {entry['name']!r} of {path}"
        bad = set(entry) - HOST_KEYS
        if bad:
            raise BadInput(f"unknown key {sorted(bad)[0]!r} in {where} "
                           f"(expected {', '.join(sorted(HOST_KEYS))})")
        for key in ("name", "address"):
            if not isinstance(entry.get(key), str):
                raise BadInput(f"{where} has no {key}")
        name = entry["name"]
        if not TOKEN.match(name):
            raise BadInput(f"invalid host name {name!r} in {path}: use 1 to 63 of [A-Za-z0-9_-]")
        if name in names:
            raise BadInput(f"host name {name!r} appears twice in {path}")
        names.add(name)
        try:
            address = str(ipaddress.ip_address(entry["address"]))
        except ValueError:
            raise BadInput(f"invalid address {entry['address']!r} of {where}: expected an IP")
        if address in addresses:
            raise BadInput(f"address {address} appears twice in {path}")
        addresses.add(address)
        kind = entry.get("kind", "instance")
        if kind not in KINDS:
            raise BadInput(f"invalid kind {kind!r} of {where}: expected elastic-metal or instance")
        caps = entry.get("capabilities", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) and TOKEN.match(c)
                                                 for c in caps):
            raise BadInput(f"invalid capabilities of {where}: expected a list of labels")
        zone = entry.get("zone")
        if zone is None:
            if len(zones) != 1:
                raise BadInput(f"{where} has no zone, and more than one --zone was given")
            zone = zones[0]
        check_zone(zone, where)
        hosts.append(render.Host(
            name=name, address=address, kind=kind, capabilities=sorted(caps), zone=zone,
            nats=bool(entry.get("nats", False)), ssh=entry.get("ssh") or f"root@{address}",
            netns=entry.get("netns") or f"mesh-{name}"))
    chosen = [h for h in hosts if h.zone in zones]
    for zone in zones:
        in_zone = [h for h in chosen if h.zone == zone]
        if not in_zone:
            raise BadInput(f"inventory {path} has no host in zone {zone}")
        if not any(h.nats for h in in_zone):
            in_zone[0].nats = True  # The zone's first host runs its NATS server.
    return chosen, node_extra


#: Zones every node knows without a topology file (topology/src/zone.rs).
SCALEWAY_ZONES = tuple(f"{r}-{n}" for r in ("fr-par", "nl-ams", "pl-waw") for n in (1, 2, 3))


def check_topology(path, meshctl, hosts):
    """The bytes of topology file `path`, checked before anything is done:
    by `meshctl topology check` (the nodes' own rules), then against the
    inventory as each node checks it when it starts (its zone known, its
    zone and kind as the file lists them)."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise BadInput(f"cannot read the topology file {path}: {e.strerror}")
    try:
        out = subprocess.run([meshctl, "topology", "check", path], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BadInput(f"cannot check the topology file {path} with {meshctl}: {e}")
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        why = lines[-1].removeprefix("meshctl: ").removeprefix("error: ")
        raise BadInput(f"invalid topology file: {why}")
    try:
        data = tomllib.loads(content.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"topology file {path} is not valid TOML: {e}")
    zones = set(SCALEWAY_ZONES) | {z.get("name") for z in data.get("zone", [])}
    listed = {n.get("name"): n for n in data.get("node", [])}
    for host in hosts:
        if host.zone not in zones:
            raise BadInput(f"zone {host.zone} of host {host.name!r} is not a Scaleway zone "
                           f"and not declared in the topology file {path}")
        node = listed.get(host.name)
        if node is None:
            continue
        if node.get("zone") != host.zone:
            raise BadInput(f"the topology file {path} puts host {host.name!r} in zone "
                           f"{node.get('zone')}, the inventory in {host.zone}")
        if node.get("kind") != host.kind:
            raise BadInput(f"the topology file {path} says host {host.name!r} is of kind "
                           f"{node.get('kind')}, the inventory {host.kind}")
    return content


def check_routes(routes):
    for route in routes:
        if not re.fullmatch(r"nats-route://([^@/]+@)?[^/:]+:\d{1,5}", route):
            raise BadInput(f'invalid route "{route}": expected nats-route://HOST:PORT')
    return routes


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zone", action="append", required=True,
                   help="zone to bring up, such as nl-ams-2 (repeat for several)")
    p.add_argument("--inventory", required=True, metavar="FILE",
                   help="TOML file: [[host]] name, address, kind, capabilities, zone, nats, ...")
    p.add_argument("--cluster", default="mesh", help="the mesh cluster name [mesh]")
    p.add_argument("--secret-file", required=True, metavar="FILE",
                   help="the existing cluster's secret (copied to every node)")
    links = p.add_mutually_exclusive_group(required=True)
    links.add_argument("--tls-dir", metavar="DIR",
                       help="folder of the cluster CA (ca.crt, ca.key; bootstrap/certs.sh ca DIR "
                            "makes one): each node gets a certificate signed by it, made there "
                            "as HOST.crt/HOST.key on first use")
    links.add_argument("--insecure", action="store_true",
                       help="plaintext links between nodes (a development mesh only)")
    p.add_argument("--nats-tls", action="store_true",
                   help="TLS between nodes (and meshctl) and NATS: each NATS server shows its "
                        "host's certificate from --tls-dir, clients check it against ca.crt "
                        "(routes between NATS servers stay plaintext)")
    p.add_argument("--nats-auth", metavar="DIR",
                   help="folder written by bootstrap/nats-auth.sh: its users and subject "
                        "permissions go into every NATS config, and nodes log in as mesh-node")
    p.add_argument("--routes", action="append", default=[], metavar="URLS",
                   help="the existing NATS servers' routes, comma separated "
                        "(nats-route://10.0.0.5:6222); none for a new cluster")
    p.add_argument("--nats-cluster", metavar="NAME",
                   help="NATS cluster name of the existing servers [mesh-<cluster>]")
    p.add_argument("--topology", metavar="FILE",
                   help="topology file (zones, placement policies) for every node")
    p.add_argument("--kv-replicas", type=int, default=3,
                   help="JetStream replicas of the mesh's buckets, one per zone [3]")
    p.add_argument("--bin-dir", metavar="DIR",
                   help="folder with mesh-node and meshctl [target/release]")
    p.add_argument("--nats-server", metavar="FILE", help="nats-server to install [on PATH]")
    p.add_argument("--shutdown-timeout", default="30s",
                   help="mesh-node's graceful stop deadline in the units [30s]")
    p.add_argument("--local", metavar="DIR",
                   help="hosts are network namespaces of this machine; files under DIR")
    p.add_argument("--ssh", default="ssh -o BatchMode=yes -o ConnectTimeout=10",
                   help="ssh command for real hosts")
    p.add_argument("--sudo", action="store_true", help="prefix commands with sudo -n")
    p.add_argument("--dry-run", action="store_true", help="print every action, do none")
    args = p.parse_args(argv)
    if args.nats_tls and not args.tls_dir:
        raise BadInput("--nats-tls needs --tls-dir (the CA that signs the NATS servers)")
    for zone in args.zone:
        check_zone(zone, "--zone")
    if len(set(args.zone)) != len(args.zone):
        raise BadInput("a zone is given twice with --zone")
    args.routes = check_routes([r for arg in args.routes for r in arg.split(",") if r])
    if not 1 <= args.kv_replicas <= 5:
        raise BadInput(f"invalid --kv-replicas {args.kv_replicas}: expected 1 to 5")
    if not re.fullmatch(r"\d+(ms|s|m)", args.shutdown_timeout):
        raise BadInput(f'invalid --shutdown-timeout "{args.shutdown_timeout}": such as 30s')
    if not TOKEN.match(args.cluster):
        raise BadInput(f'invalid --cluster "{args.cluster}": use [A-Za-z0-9_-]')
    args.nats_cluster = args.nats_cluster or f"mesh-{args.cluster}"
    return args


def find_binaries(args):
    """Local path of every binary to install."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    bin_dir = args.bin_dir or os.path.join(target, "release")
    found = {b: os.path.join(bin_dir, b) for b in ("mesh-node", "meshctl")}
    nats = args.nats_server
    if not nats:
        out = subprocess.run(["bash", "-c", "command -v nats-server && "
                              "{ pyenv which nats-server 2>/dev/null || true; }"],
                             capture_output=True, text=True)
        lines = out.stdout.split()
        # A pyenv shim is a script: install the real binary behind it.
        nats = lines[-1] if lines else None
    if not nats:
        raise BadInput("nats-server not found: give --nats-server FILE "
                       "(bootstrap/install-deps.sh nats installs one)")
    found["nats-server"] = os.path.realpath(nats)
    for name, path in found.items():
        if not os.access(path, os.X_OK):
            raise BadInput(f"{path} is missing or not executable "
                           f"({'--nats-server' if name == 'nats-server' else '--bin-dir'})")
    return found


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ the run


class Run:
    """One run of the script over the chosen hosts."""

    def __init__(self, args, hosts, node_extra, binaries, topology):
        self.args = args
        self.hosts = hosts
        self.node_extra = node_extra
        self.binaries = binaries
        self.remotes = {h.name: Remote(h, args) for h in hosts}
        self.changes = 0
        self.dry = args.dry_run
        with open(args.secret_file, "rb") as f:
            self.secret = f.read()
        if len(self.secret.strip()) == 0:
            raise BadInput(f"secret file {args.secret_file} is empty")
        #: The topology file's bytes (checked), or None.
        self.topology = topology
        self.sums = {}
        self.nats_auth, self.nats_password = "", b""
        if args.nats_auth:
            try:
                with open(os.path.join(args.nats_auth, "auth.conf"), encoding="utf-8") as f:
                    self.nats_auth = f.read()
                with open(os.path.join(args.nats_auth, "node.password"), "rb") as f:
                    self.nats_password = f.read()
            except OSError as e:
                raise BadInput(f"--nats-auth {args.nats_auth}: {e} "
                               "(bootstrap/nats-auth.sh CLUSTER DIR writes it)") from e

    def action(self, host, text):
        self.changes += 1
        prefix = "would " if self.dry else ""
        say(f"[{host.name}] {prefix}{text}")

    def resume_hint(self):
        return ("fix the cause, then run the same command again to resume: "
                + shlex.join([sys.argv[0]] + sys.argv[1:]))

    # -- step 1
    def check_reachable(self):
        bad = []
        for host in self.hosts:
            why = self.remotes[host.name].reach()
            if why:
                bad.append(f"host {host.name} ({host.address}) is unreachable: {why}")
        if bad:
            raise Stop("; ".join(bad) + ". Nothing was changed; fix the host or the inventory")
        say(f"reached {plural(len(self.hosts), 'host')}: {', '.join(h.name for h in self.hosts)}")

    # -- step 2
    def files_of(self, host):
        """(path on host, bytes, mode) for every rendered file of `host`."""
        r = self.remotes[host.name]
        layout = render.Layout(r.root, local=r.local)
        ctx = render.Context(
            cluster=self.args.cluster, nats_cluster=self.args.nats_cluster,
            routes=self.args.routes, hosts=self.hosts, kv_replicas=self.args.kv_replicas,
            shutdown_timeout=self.args.shutdown_timeout, node_extra=self.node_extra,
            topology=self.topology is not None,
            links="insecure" if self.args.insecure else "tls", nats_auth=self.nats_auth,
            nats_tls=self.args.nats_tls)
        files = [(layout.node_config, render.node_config(ctx, host, layout).encode(), 0o640),
                 (layout.secret, self.secret, 0o640),
                 (layout.node_unit, render.node_unit(ctx, host, layout).encode(), 0o644)]
        if self.topology is not None:
            files.append((layout.topology, self.topology, 0o640))
        if self.nats_auth:
            files.append((layout.nats_password, self.nats_password, 0o640))
        if not self.args.insecure:
            ca, cert, key = self.node_certificate(host)
            files += [(layout.tls_ca, ca, 0o644), (layout.tls_cert, cert, 0o644),
                      (layout.tls_key, key, 0o640)]
        if host.nats:
            files += [(layout.nats_config, render.nats_config(ctx, host, layout).encode(), 0o640),
                      (layout.nats_unit, render.nats_unit(ctx, host, layout).encode(), 0o644)]
        return layout, files

    def node_certificate(self, host):
        """(CA, certificate, key) of `host`, made with bootstrap/certs.sh in
        --tls-dir the first time (kept there, so later runs change nothing)."""
        folder = self.args.tls_dir
        cert = os.path.join(folder, f"{host.name}.crt")
        key = os.path.join(folder, f"{host.name}.key")
        if not (os.path.exists(cert) and os.path.exists(key)):
            if self.dry:
                say(f"[{host.name}] would make its certificate {cert}")
                return b"", b"", b""
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "certs.sh")
            out = subprocess.run([script, "node", folder, host.name, host.address],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise BadInput(f"cannot make the certificate of {host.name}: "
                               + out.stderr.strip().replace("\n", " "))
        try:
            with open(os.path.join(folder, "ca.crt"), "rb") as f_ca, \
                    open(cert, "rb") as f_cert, open(key, "rb") as f_key:
                return f_ca.read(), f_cert.read(), f_key.read()
        except OSError as e:
            raise BadInput(f"--tls-dir {folder}: {e}") from e

    def install_binary(self, host, name, dest):
        src = self.binaries[name]
        r = self.remotes[host.name]
        if r.local:
            try:
                if os.path.samefile(src, dest):
                    return False
            except FileNotFoundError:
                pass
            if os.path.exists(dest) and self.sum(src) == sha256_file(dest):
                return False
            self.action(host, f"install {name} as {dest}")
            if not self.dry:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                tmp = f"{dest}.new"
                if os.path.exists(tmp):
                    os.unlink(tmp)
                try:
                    os.link(src, tmp)  # Same file system: no copy of a large binary.
                except OSError:
                    subprocess.run(["cp", src, tmp], check=True)
                os.chmod(tmp, 0o755)
                os.replace(tmp, dest)
            return True
        have = r.must(f"sha256sum {shlex.quote(dest)} 2>/dev/null || true", "sha256sum")
        if have.split()[:1] == [self.sum(src)]:
            return False
        self.action(host, f"install {name} as {dest}")
        if not self.dry:
            with open(src, "rb") as f:
                r.must(f"d={shlex.quote(dest)}; mkdir -p \"${{d%/*}}\" && cat >\"$d.new\" && "
                       "chmod 755 \"$d.new\" && mv -f \"$d.new\" \"$d\"", f"copying {name}",
                       data=f.read(), timeout=600)
        return True

    def sum(self, path):
        if path not in self.sums:
            self.sums[path] = sha256_file(path)
        return self.sums[path]

    def install_file(self, host, path, content, mode):
        r = self.remotes[host.name]
        # On a real host the mesh user reads configs and the secret.
        group = "" if r.local or mode & 0o004 else ' && chgrp mesh "$f.new"'

        digest = hashlib.sha256(content).hexdigest()
        have = r.must(f"sha256sum {shlex.quote(path)} 2>/dev/null || true", "sha256sum")
        if have.split()[:1] == [digest]:
            return False
        self.action(host, f"write {path}")
        if not self.dry:
            r.must(f"f={shlex.quote(path)}; mkdir -p \"${{f%/*}}\" && (umask 077 && "
                   f"cat >\"$f.new\") && chmod {mode:o} \"$f.new\"{group} && "
                   "mv -f \"$f.new\" \"$f\"",
                   f"writing {path}", data=content)
        return True

    def install(self, host):
        """Installs binaries, configs and units; the stamps of the services."""
        r = self.remotes[host.name]
        layout, files = self.files_of(host)
        if not r.local:
            self.prepare_real_host(host, layout)
        for name in BINARIES:
            if name == "nats-server" and not host.nats:
                continue
            self.install_binary(host, name, layout.binary(name))
        for path, content, mode in files:
            self.install_file(host, path, content, mode)
        if not r.local:
            for folder in layout.data_dirs("node") + (layout.data_dirs("nats") if host.nats
                                                       else []):
                self.make_data_dir(host, folder)
        contents = {path: content for path, content, _ in files}
        node_parts = [contents[layout.node_config], contents[layout.secret],
                      contents[layout.node_unit], self.sum(self.binaries["mesh-node"]),
                      contents.get(layout.topology, b""), contents.get(layout.tls_cert, b""),
                      contents.get(layout.nats_password, b"")]
        stamps = {"node": self.stamp(*node_parts)}
        if host.nats:
            stamps["nats"] = self.stamp(contents[layout.nats_config], contents[layout.nats_unit],
                                        self.sum(self.binaries["nats-server"]))
        return layout, stamps

    @staticmethod
    def stamp(*parts):
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part if isinstance(part, bytes) else part.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]

    def prepare_real_host(self, host, layout):
        r = self.remotes[host.name]
        out = r.must("id -u mesh >/dev/null 2>&1 && echo user; "
                     "command -v systemctl >/dev/null && echo systemd", "checking the host")
        if "systemd" not in out:
            raise Stop(f"{host.name} has no systemd (systemctl not found)")
        if "user" not in out:
            self.action(host, "create the system user mesh")
            if not self.dry:
                r.must("useradd --system --home-dir /var/lib/mesh --shell /usr/sbin/nologin mesh",
                       "useradd mesh")

    def make_data_dir(self, host, folder):
        r = self.remotes[host.name]
        if "yes" in r.must(f"test -d {folder} && echo yes || true", "test -d"):
            return
        self.action(host, f"create {folder} for the mesh user")
        if not self.dry:
            r.must(f"install -d -o mesh -g mesh -m 750 {folder}", f"creating {folder}")

    # -- steps 3 and 4: services
    def service_state(self, host, layout, service):
        """(running, stamp it was started with)."""
        r = self.remotes[host.name]
        stamp_file = layout.stamp(service)
        if r.local:
            pid = read_pid(layout.pid_file(service))
            running = pid is not None and process_matches(pid, layout.marker(service))
            started = read_text(stamp_file) if running else None
            return running, started
        out = r.must(f"systemctl is-active {layout.unit_name(service)} || true; "
                     f"cat {shlex.quote(stamp_file)} 2>/dev/null || true", "systemctl is-active")
        lines = out.split()
        running = bool(lines) and lines[0] == "active"
        return running, (lines[1] if running and len(lines) > 1 else None)

    def ensure_service(self, host, layout, service, stamp):
        """Starts `service`, or restarts it when it runs with other settings.
        Returns whether anything was done."""
        running, started = self.service_state(host, layout, service)
        if running and started == stamp:
            return False
        verb = "restart" if running else "start"
        label = "nats-server" if service == "nats" else "mesh-node"
        self.action(host, f"{verb} {label} ({layout.unit_name(service)})")
        if self.dry:
            return True
        r = self.remotes[host.name]
        if r.local:
            if running:
                stop_local(read_pid(layout.pid_file(service)), layout.marker(service))
            argv = (render.nats_command(layout) if service == "nats"
                    else render.node_command(layout, self.args.shutdown_timeout))
            # The stamp only counts while the process runs: written first,
            # it is right even when this run is killed just after the start.
            write_text(layout.stamp(service), stamp)
            start_local(host, layout, service, argv)
        else:
            unit = layout.unit_name(service)
            r.must(f"systemctl daemon-reload && systemctl enable {unit} >/dev/null 2>&1 && "
                   f"systemctl restart {unit} && printf '%s\\n' {stamp} >{layout.stamp(service)}",
                   f"starting {unit}")
        return True

    # -- probes
    def nats_ready(self, host):
        """None when host's NATS server is healthy and routed; else why not."""
        self.check_alive(host, "nats")
        status, body = self.remotes[host.name].http_get(render.NATS_MONITOR_PORT, "/healthz")
        if status != 200:
            return f"/healthz: {status or ''} {body.strip()[:200]}"
        peers = {f"nats-{h.name}" for h in self.hosts if h.nats and h.name != host.name}
        status, body = self.remotes[host.name].http_get(render.NATS_MONITOR_PORT, "/routez")
        try:
            routes = {r.get("remote_name") for r in json.loads(body).get("routes") or []}
        except ValueError:
            return "/routez did not answer JSON"
        if peers - routes:
            return f"no route yet to {', '.join(sorted(peers - routes))}"
        if self.args.routes and not routes - peers:
            return "no route yet to the existing cluster (--routes)"
        status, body = self.remotes[host.name].http_get(render.NATS_MONITOR_PORT, "/jsz")
        try:
            meta = json.loads(body).get("meta_cluster") or {}
        except ValueError:
            return "/jsz did not answer JSON"
        if not meta.get("leader"):
            return "JetStream has no meta leader yet"
        return None

    def node_ready(self, host):
        self.check_alive(host, "node")
        status, body = self.remotes[host.name].http_get(render.METRICS_PORT, "/readyz")
        if status == 200:
            return None
        return f"/readyz: {status or ''} {' '.join(body.split())[:200] or 'no answer'}"

    def check_alive(self, host, service):
        """Stops the run at once when the service has exited (such as a node
        refusing its configuration), with the last lines it logged."""
        r = self.remotes[host.name]
        layout = render.Layout(r.root, local=r.local)
        label = "nats-server" if service == "nats" else "mesh-node"
        if r.local:
            if self.service_state(host, layout, service)[0]:
                return
            lines = (read_text(layout.log_file(service)) or "").splitlines()[-1:]
            where = layout.log_file(service)
        else:
            unit = layout.unit_name(service)
            state = r.must(f"systemctl show -p ActiveState --value {unit}", "systemctl show")
            if state.strip() not in ("failed", "inactive"):
                return
            lines = r.must(f"journalctl -u {unit} -n 1 --no-pager -o cat || true",
                           "journalctl").splitlines()
            where = f"journalctl -u {unit}"
        raise Stop(f"{label} on {host.name} exited: {' | '.join(lines) or 'no output'} "
                   f"(see {where})")

    def wait_all(self, what, hosts, probe, timeout):
        deadline = time.monotonic() + timeout
        pending = {h.name: "not checked yet" for h in hosts}
        while True:
            for host in hosts:
                if host.name in pending:
                    why = probe(host)
                    if why is None:
                        del pending[host.name]
                        say(f"[{host.name}] {what} ready")
                    else:
                        pending[host.name] = why
            if not pending:
                return
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{n}: {w}" for n, w in pending.items())
                raise Stop(f"{what} not ready after {timeout:.0f} s ({detail})")
            time.sleep(POLL)

    def members(self, layouts):
        """The member list as a node of the new zones sees it."""
        host = self.hosts[0]
        layout = layouts[host.name]
        url = f"nats://{render.nats_host_of(self.hosts, host).address}:{render.NATS_CLIENT_PORT}"
        login = ""
        if self.nats_auth:
            password = shlex.quote(layout.nats_password)
            login += f" --nats-user mesh-node --nats-password-file {password}"
        if self.args.nats_tls:
            login += f" --nats-ca {shlex.quote(layout.tls_ca)}"
        out = self.remotes[host.name].must(
            f"{shlex.quote(layout.binary('meshctl'))} --nats {url}{login} --cluster "
            f"{shlex.quote(self.args.cluster)} members --json --timeout 2s", "meshctl members")
        return json.loads(out)

    def wait_members(self, layouts):
        deadline = time.monotonic() + NODE_TIMEOUT
        wanted = {h.name for h in self.hosts}
        while True:
            try:
                members = self.members(layouts)
                view = {m["name"]: m for m in members}
                missing = sorted(wanted - {n for n, m in view.items() if m.get("linked")})
                if not missing:
                    return members
                why = f"not linked or not members: {', '.join(missing)}"
            except (Stop, ValueError) as e:
                why = str(e)
            if time.monotonic() >= deadline:
                raise Stop(f"nodes did not all join after {NODE_TIMEOUT:.0f} s ({why})")
            time.sleep(POLL)

    def go(self):
        self.check_reachable()
        layouts, stamps = {}, {}
        for host in self.hosts:
            layouts[host.name], stamps[host.name] = self.install(host)
        nats_hosts = [h for h in self.hosts if h.nats]
        for host in nats_hosts:
            self.ensure_service(host, layouts[host.name], "nats", stamps[host.name]["nats"])
        if self.dry:
            for host in self.hosts:
                self.ensure_service(host, layouts[host.name], "node", stamps[host.name]["node"])
            say(f"dry run: {plural(self.changes, 'action')} would be taken" if self.changes
                else "dry run: nothing to change")
            return
        self.wait_all("nats-server", nats_hosts, self.nats_ready, NATS_TIMEOUT)
        # Nodes that run with other settings are restarted one at a time, so
        # that their agents always have somewhere to go.
        for host in self.hosts:
            running, _ = self.service_state(host, layouts[host.name], "node")
            if self.ensure_service(host, layouts[host.name], "node", stamps[host.name]["node"]) \
                    and running:
                self.wait_all("mesh-node", [host], self.node_ready, NODE_TIMEOUT)
        self.wait_all("mesh-node", self.hosts, self.node_ready, NODE_TIMEOUT)
        members = self.wait_members(layouts)
        self.summary(members)

    def summary(self, members):
        say("")
        zones = ", ".join(self.args.zone)
        say(f"zone(s) {zones} of cluster {self.args.cluster}: "
            f"{plural(len(self.hosts), 'node')} ready and linked")
        say(f"{'host':<16} {'zone':<10} {'kind':<14} {'address':<16} services")
        for h in self.hosts:
            services = "nats-server, mesh-node" if h.nats else "mesh-node"
            say(f"{h.name:<16} {h.zone:<10} {h.kind:<14} {h.address:<16} {services}")
        by_zone = {}
        for m in members:
            by_zone[m.get("zone", "?")] = by_zone.get(m.get("zone", "?"), 0) + 1
        say("members by zone: " + ", ".join(f"{z} {n}" for z, n in sorted(by_zone.items())))
        routes = [f"nats-route://{h.address}:{render.NATS_ROUTE_PORT}"
                  for h in self.hosts if h.nats]
        say("routes of the new NATS servers (for the next zone's --routes): " + ",".join(routes))
        say(f"changed: {self.changes}" if self.changes else "nothing changed")


# ------------------------------------------------------------------ local mode


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def main(argv):
    try:
        args = parse_args(argv)
        hosts, node_extra = load_inventory(args.inventory, args.zone)
        binaries = find_binaries(args)
        if args.local is not None and os.geteuid() != 0:
            raise BadInput("--local needs root (ip netns exec)")
        topology = (check_topology(args.topology, binaries["meshctl"], hosts)
                    if args.topology else None)
        run = Run(args, hosts, node_extra, binaries, topology)
    except BadInput as e:
        warn(f"error: {e}")
        return 2
    except OSError as e:
        warn(f"error: {e.filename}: {e.strerror}")
        return 2
    try:
        _lock = lock_local(args.local) if args.local is not None and not args.dry_run else None
        run.go()
    except Stop as e:
        warn(f"error: {e}")
        if run.changes and not run.dry:
            warn("what was done so far is consistent; " + run.resume_hint())
        else:
            warn(run.resume_hint())
        return 1
    except KeyboardInterrupt:
        warn("interrupted; run the same command again to resume")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
