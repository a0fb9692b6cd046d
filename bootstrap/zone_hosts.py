"""How add-zone.py reaches hosts and runs services on them.

A host is reached over ssh, or, in local mode, is a network namespace of
this machine whose files live under a folder of its own; in local mode the
services are started directly (a pid file per service) instead of by
systemd.
"""

import fcntl
import os
import shlex
import signal
import subprocess
import time

#: How long a stopping local process gets before SIGKILL.
STOP_GRACE = 15.0


class Stop(Exception):
    """A step failed: exit 1 with a hint to resume."""


class Remote:
    """Runs shell commands on one host: over ssh, or inside a namespace."""

    def __init__(self, host, args):
        self.host = host
        self.local = args.local is not None
        self.root = os.path.join(os.path.abspath(args.local), host.name) if self.local else ""
        self.ssh = shlex.split(args.ssh)
        self.sudo = ["sudo", "-n"] if args.sudo else []

    def where(self):
        if self.local:
            return f"network namespace {self.host.netns}"
        return f"{self.host.ssh} over ssh"

    def argv(self, script):
        if self.local:
            return ["ip", "netns", "exec", self.host.netns, "bash", "-c", script]
        remote = shlex.join(self.sudo + ["bash", "-c", script])
        return self.ssh + [self.host.ssh, "--", remote]

    def sh(self, script, data=None, timeout=60):
        """Runs `script` with bash on the host; (exit status, stdout, stderr)."""
        try:
            out = subprocess.run(self.argv(script), input=data, capture_output=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, b"", b"timed out"
        return out.returncode, out.stdout, out.stderr

    def must(self, script, what, data=None, timeout=60):
        code, out, err = self.sh(script, data, timeout)
        if code != 0:
            detail = (err or out).decode(errors="replace").strip().splitlines()
            raise Stop(f"{what} failed on {self.host.name} ({self.where()}): "
                       f"{detail[-1] if detail else f'exit status {code}'}")
        return out.decode(errors="replace")

    def reach(self):
        """None when the host answers; otherwise why not."""
        if self.local:
            if not os.path.exists(f"/run/netns/{self.host.netns}"):
                return f"network namespace {self.host.netns} does not exist"
            code, out, _ = self.sh("ip -o -4 addr show; ip -o -6 addr show", timeout=10)
            if code != 0:
                return f"cannot run commands in network namespace {self.host.netns}"
            if f" {self.host.address}/" not in out.decode():
                return f"network namespace {self.host.netns} has no address {self.host.address}"
            return None
        code, _, err = self.sh("true", timeout=30)
        if code != 0:
            text = err.decode(errors="replace").strip().splitlines()
            return f"ssh {self.host.ssh} failed: {text[-1] if text else f'exit status {code}'}"
        return None

    def path(self, path):
        """Where a host path lives (under the host's folder in local mode)."""
        return self.root + path

    def http_get(self, port, path):
        """(status, body) of GET http://address:port/path run on the host."""
        script = (f"exec 3<>/dev/tcp/{self.host.address}/{port} || exit 7; "
                  f"printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n"
                  "Connection: close\\r\\n\\r\\n' >&3;"
                  " timeout 3 cat <&3")
        code, out, _ = self.sh(f"timeout 5 bash -c {shlex.quote(script)}", timeout=15)
        if code != 0 and not out:
            return None, "no answer"
        head, _, body = out.partition(b"\r\n\r\n")
        head = head.decode(errors="replace")
        parts = head.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if "transfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        return status, body.decode(errors="replace")


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".new", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".new", path)


def read_pid(path):
    text = read_text(path)
    return int(text) if text and text.isdigit() else None


def process_matches(pid, marker):
    """Whether `pid` runs and its command line holds `marker` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and marker in cmdline


def stop_local(pid, marker):
    if pid is None or not process_matches(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while process_matches(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_matches(pid, marker):
        os.kill(pid, signal.SIGKILL)


def start_local(host, layout, service, argv):
    """Starts a daemon inside the host's namespace, as systemd would."""
    os.makedirs(os.path.dirname(layout.log_file(service)), exist_ok=True)
    for d in layout.data_dirs(service):
        os.makedirs(d, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_LOG", "info")
    pid_file = layout.pid_file(service)
    os.makedirs(os.path.dirname(pid_file), exist_ok=True)
    if os.path.exists(pid_file):
        os.unlink(pid_file)
    # The child records its own pid before it execs the daemon, so that a
    # run killed right after the start still leaves the pid behind.
    record = 'echo $$ >"$0.new" && mv -f "$0.new" "$0" && exec "$@"'
    with open(layout.log_file(service), "ab") as log:
        subprocess.Popen(["sh", "-c", record, pid_file, "ip", "netns", "exec", host.netns] + argv,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if read_pid(pid_file) is not None:
            return
        time.sleep(0.05)
    raise Stop(f"{argv[0]} did not start in {host.netns} (see {layout.log_file(service)})")


def dechunk(body):
    """The body of a chunked HTTP/1.1 answer (bytes)."""
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def lock_local(root):
    os.makedirs(root, exist_ok=True)
    handle = open(os.path.join(root, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise Stop(f"another add-zone.py runs on {root} (it holds {root}/.lock)")
    return handle
