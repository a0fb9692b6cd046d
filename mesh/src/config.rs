//! Node configuration: a TOML file, then `MESH_*` environment, then flags.
//!
//! Every value is checked before the node starts; a bad one stops it with
//! one line naming the key and the value. Defaults make a node join a
//! local development mesh, except that links need TLS files or an explicit
//! `--insecure`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use topology::{NodeKind, Topology};

/// The cluster a node joins when none is given.
pub const DEFAULT_CLUSTER: &str = "mesh";
/// The NATS server a node and `meshctl` use when none is given.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";
/// The zone of a node that does not say.
pub const DEFAULT_ZONE: &str = "local-1";
/// The link listen address when none is given (loopback: safe by default).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// The data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// How often a node announces itself.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a silent node stays in the member list.
pub const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest encoded agent message, far below the link's 16 MiB frames.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How long a gateway call waits when the request does not say.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many gateway calls a node serves at once; more are refused.
pub const DEFAULT_GATEWAY_MAX_INFLIGHT: usize = 256;
/// How many of the largest call requests (twice `max_message_bytes`) a
/// node holds at once by default: 4 MiB of bodies with the default cap.
/// Parsing big bodies takes the runtime from links and leases; on two
/// cores, 8 MiB of 900 KB calls in flight already let a link go silent.
pub const DEFAULT_GATEWAY_LARGEST_CALLS: usize = 2;
/// How long a link may stay silent (no answer to pings) before it is cut.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a durable agent may go without a message before it is
/// passivated (stopped, its state left in storage).
pub const DEFAULT_PASSIVATE_AFTER: Duration = Duration::from_secs(600);
/// How long a node's ownership lease lasts without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(1);
/// How often a node snapshots its agents' state.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);
/// How many complete snapshots a node keeps.
pub const DEFAULT_SNAPSHOT_KEEP: usize = 5;
/// The largest configuration (or secret) file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Below this many bytes a cluster secret gets a warning.
const MIN_SECRET_BYTES: usize = 16;
/// The secret a development node uses when none is configured.
const DEVELOPMENT_SECRET: &str = "agent-mesh-development-secret";

/// A configuration problem, as one line naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(key: &str, value: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("invalid value \"{value}\" for {key}: {why}"))
}

/// The cluster secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's text, for the link handshake only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret from text read elsewhere (NATS passwords, tokens, seeds).
    pub(crate) fn from_text(text: &str) -> Secret {
        Secret(text.to_owned())
    }

    /// Whether this is the built-in development secret.
    pub fn is_development(&self) -> bool {
        self.0 == DEVELOPMENT_SECRET
    }

    /// A secret from text, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Node settings from the command line and the environment.
///
/// Each flag overrides its `MESH_*` variable, which overrides the file.
#[derive(Debug, Default, Args)]
pub struct NodeArgs {
    /// TOML configuration file; flags and environment override its keys.
    #[arg(long, env = "MESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cluster to join; clusters sharing a NATS never see each other.
    #[arg(long, env = "MESH_CLUSTER")]
    pub cluster: Option<String>,
    /// This node's name, unique in its cluster [default: host name].
    #[arg(long, env = "MESH_NAME")]
    pub name: Option<String>,
    /// Availability zone, such as fr-par-1 [default: local-1].
    #[arg(long, env = "MESH_ZONE")]
    pub zone: Option<String>,
    /// Host kind: elastic-metal or instance [default: instance].
    #[arg(long, env = "MESH_KIND")]
    pub kind: Option<String>,
    /// Capability labels of this host, such as gpu (comma separated).
    #[arg(long, env = "MESH_CAPABILITIES", value_delimiter = ',')]
    pub capabilities: Option<Vec<String>>,
    /// NATS server URLs (comma separated) [default: nats://127.0.0.1:4222].
    #[arg(long, env = "MESH_NATS", value_delimiter = ',')]
    pub nats: Option<Vec<String>>,
    /// Address the cluster link listens on [default: 127.0.0.1:7400].
    #[arg(long, env = "MESH_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address other nodes dial [default: the listen address].
    #[arg(long, env = "MESH_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Directory for this node's data [default: ./data].
    #[arg(long, env = "MESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the cluster secret (MESH_SECRET may hold it instead).
    #[arg(long, env = "MESH_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Interval between announcements, such as 500ms.
    #[arg(long, env = "MESH_HEARTBEAT", value_name = "DURATION")]
    pub heartbeat: Option<String>,
    /// How long a silent node stays a member, such as 3s.
    #[arg(long, env = "MESH_MEMBER_TIMEOUT", value_name = "DURATION")]
    pub member_timeout: Option<String>,
    /// Largest encoded agent message in bytes.
    #[arg(long, env = "MESH_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Default deadline of gateway calls, such as 5s.
    #[arg(long, env = "MESH_CALL_TIMEOUT", value_name = "DURATION")]
    pub call_timeout: Option<String>,
    /// Gateway calls served at once; more get `unavailable` [default: 256].
    #[arg(long, env = "MESH_GATEWAY_MAX_INFLIGHT", value_name = "N")]
    pub gateway_max_inflight: Option<usize>,
    /// Bytes of gateway call bodies held at once; more get `unavailable`
    /// [default: 4 × max_message_bytes].
    #[arg(long, env = "MESH_GATEWAY_MAX_INFLIGHT_BYTES", value_name = "BYTES")]
    pub gateway_max_inflight_bytes: Option<usize>,
    /// Snapshot target: s3://bucket/prefix or file:///path
    /// [default: file://<data-dir>/snapshots].
    #[arg(long, env = "MESH_SNAPSHOTS", value_name = "URL")]
    pub snapshots: Option<String>,
    /// S3 endpoint, such as https://s3.fr-par.scw.cloud.
    #[arg(long, env = "MESH_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region, such as fr-par.
    #[arg(long, env = "MESH_S3_REGION")]
    pub s3_region: Option<String>,
    /// Interval between periodic snapshots, such as 5m.
    #[arg(long, env = "MESH_SNAPSHOT_INTERVAL", value_name = "DURATION")]
    pub snapshot_interval: Option<String>,
    /// How many complete snapshots to keep.
    #[arg(long, env = "MESH_SNAPSHOT_KEEP", value_name = "N")]
    pub snapshot_keep: Option<usize>,
    /// Also keep every snapshot younger than this, such as 7d.
    #[arg(long, env = "MESH_SNAPSHOT_MAX_AGE", value_name = "DURATION")]
    pub snapshot_max_age: Option<String>,
    /// Ownership lease; a dead node's agents move after about this long.
    #[arg(long, env = "MESH_LEASE", value_name = "DURATION")]
    pub lease: Option<String>,
    /// How long a link may go without answering pings before it is cut.
    #[arg(long, env = "MESH_LINK_TIMEOUT", value_name = "DURATION")]
    pub link_timeout: Option<String>,
    /// Idle time after which a durable agent is passivated, or `off`
    /// [default: 10m].
    #[arg(long, env = "MESH_PASSIVATE_AFTER", value_name = "DURATION")]
    pub passivate_after: Option<String>,
    /// Address serving /metrics, /healthz and /readyz [default: none].
    #[arg(long, env = "MESH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// JetStream replicas of the ownership and replicated-state buckets
    /// (3 in a NATS cluster spanning zones) [default: 1].
    #[arg(long, env = "MESH_KV_REPLICAS", value_name = "N")]
    pub kv_replicas: Option<usize>,
    /// NATS credentials and TLS.
    #[command(flatten)]
    pub nats_auth: crate::nats_auth::NatsAuthArgs,
    /// Plaintext links, for a development mesh only: no TLS, a warning at
    /// start.
    #[arg(long, env = "MESH_INSECURE")]
    pub insecure: bool,
    /// The cluster CA certificate (PEM) that signs every node's
    /// certificate.
    #[arg(long, env = "MESH_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), naming the node (DNS:<name>).
    #[arg(long, env = "MESH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "MESH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Agent kinds gateway calls may reach (comma separated) [default: all].
    #[arg(
        long,
        env = "MESH_GATEWAY_ALLOW",
        value_delimiter = ',',
        value_name = "KINDS"
    )]
    pub gateway_allow: Option<Vec<String>>,
    /// Topology file: extra zones, node inventory, placement policies.
    #[arg(long, env = "MESH_TOPOLOGY", value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Worker agents this node hosts for the task board [default: 0].
    #[arg(long, env = "MESH_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Programs the `exec` task may run (comma separated) [default: none,
    /// which disables `exec`].
    #[arg(
        long,
        env = "MESH_EXEC_ALLOW",
        value_delimiter = ',',
        value_name = "PROGRAMS"
    )]
    pub exec_allow: Option<Vec<String>>,
    /// Link frame versions to speak, N or MIN-MAX, within the build's own
    /// [default: all the build speaks]; see the README, "Upgrading".
    #[arg(long, env = "MESH_WIRE_VERSIONS", value_name = "RANGE")]
    pub wire_versions: Option<String>,
}

/// The keys of the configuration file; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster: Option<String>,
    name: Option<String>,
    zone: Option<String>,
    kind: Option<String>,
    capabilities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "one_or_more_urls")]
    nats: Option<Vec<String>>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    heartbeat: Option<String>,
    member_timeout: Option<String>,
    max_message_bytes: Option<usize>,
    call_timeout: Option<String>,
    gateway_max_inflight: Option<usize>,
    gateway_max_inflight_bytes: Option<usize>,
    snapshots: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    snapshot_interval: Option<String>,
    snapshot_keep: Option<usize>,
    snapshot_max_age: Option<String>,
    lease: Option<String>,
    link_timeout: Option<String>,
    passivate_after: Option<String>,
    kv_replicas: Option<usize>,
    metrics_listen: Option<String>,
    gateway_allow: Option<Vec<String>>,
    topology: Option<PathBuf>,
    workers: Option<usize>,
    exec_allow: Option<Vec<String>>,
    wire_versions: Option<String>,
    insecure: Option<bool>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_token_file: Option<PathBuf>,
    nats_nkey_file: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_ca: Option<PathBuf>,
    nats_cert: Option<PathBuf>,
    nats_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// A node's checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster this node belongs to.
    pub cluster: String,
    /// This node's name, unique in the cluster.
    pub name: String,
    /// The node's availability zone.
    pub zone: String,
    /// The kind of host.
    pub kind: NodeKind,
    /// Capability labels, sorted.
    pub capabilities: Vec<String>,
    /// NATS server URLs.
    pub nats: Vec<String>,
    /// Where the cluster link listens.
    pub listen: SocketAddr,
    /// Where other nodes dial this one.
    pub advertise: SocketAddr,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// The cluster secret.
    pub secret: Secret,
    /// Interval between announcements.
    pub heartbeat: Duration,
    /// How long a silent node stays a member.
    pub member_timeout: Duration,
    /// Largest encoded agent message.
    pub max_message_bytes: usize,
    /// Default deadline of gateway calls.
    pub call_timeout: Duration,
    /// How many gateway calls are served at once.
    pub gateway_max_inflight: usize,
    /// How many bytes of gateway call bodies are held at once.
    pub gateway_max_inflight_bytes: usize,
    /// Where snapshots go.
    pub snapshots: SnapshotTarget,
    /// Interval between periodic snapshots.
    pub snapshot_interval: Duration,
    /// How many complete snapshots to keep.
    pub snapshot_keep: usize,
    /// Snapshots younger than this are kept too.
    pub snapshot_max_age: Option<Duration>,
    /// How long an ownership lease lasts without renewal.
    pub lease: Duration,
    /// How long a link may go without answering pings.
    pub link_timeout: Duration,
    /// Idle time after which a durable agent is passivated; `None`: never.
    pub passivate_after: Option<Duration>,
    /// JetStream replicas of the mesh's buckets.
    pub kv_replicas: usize,
    /// Where /metrics, /healthz and /readyz are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The agent kinds gateway calls may reach; all when `None`.
    pub gateway_allow: Option<Vec<String>>,
    /// Zones, inventory and placement policies (empty without a file).
    pub topology: Topology,
    /// Whether snapshots were configured explicitly, and so may be shared
    /// between nodes: only then can an agent with `local` state move.
    pub snapshots_shared: bool,
    /// How many worker agents this node hosts.
    pub workers: usize,
    /// Programs the `exec` task may run; empty disables it.
    pub exec_allow: Vec<String>,
    /// The link frame versions this node speaks.
    pub wire_versions: crate::wire::VersionRange,
    /// How links are protected.
    pub links: LinkSecurity,
    /// NATS credentials and TLS.
    pub nats_auth: crate::nats_auth::NatsAuth,
}

/// How links between nodes are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSecurity {
    /// Mutual TLS with the cluster CA, then the cluster secret handshake.
    Tls {
        /// The cluster CA certificate.
        ca: PathBuf,
        /// This node's certificate.
        cert: PathBuf,
        /// This node's private key.
        key: PathBuf,
    },
    /// Plaintext with the cluster secret handshake only (`--insecure`).
    Insecure,
}

/// The most worker agents one node hosts.
pub const MAX_WORKERS: usize = 1024;

/// Where snapshots are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotTarget {
    /// A local folder.
    File(PathBuf),
    /// An S3-compatible bucket; credentials come from `AWS_*` variables.
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix inside the bucket (may be empty).
        prefix: String,
        /// The endpoint (`https://s3.fr-par.scw.cloud`); AWS when absent.
        endpoint: Option<String>,
        /// The region (`fr-par`).
        region: Option<String>,
    },
}

impl fmt::Display for SnapshotTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotTarget::File(path) => write!(f, "file://{}", path.display()),
            SnapshotTarget::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                write!(f, "s3://{bucket}/{prefix}")?;
                if let Some(endpoint) = endpoint {
                    write!(f, " at {endpoint}")?;
                }
                Ok(())
            }
        }
    }
}

impl Config {
    /// A development configuration: every default, with the given name.
    pub fn development(name: &str) -> Result<Config, ConfigError> {
        let args = NodeArgs {
            name: Some(name.to_owned()),
            insecure: true,
            ..NodeArgs::default()
        };
        Config::load(args, |_| None)
    }

    /// Reads the file named by `args.config` (if any), then applies `args`,
    /// which already hold the environment, and checks everything.
    ///
    /// `env` looks up variables that have no flag (`MESH_SECRET`).
    pub fn load(
        args: NodeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let text = |flag: Option<String>, file: Option<String>| flag.or(file);

        let cluster = text(args.cluster, file.cluster).unwrap_or_else(|| DEFAULT_CLUSTER.into());
        check_token("cluster", &cluster)?;
        let name = match text(args.name, file.name) {
            Some(name) => name,
            None => default_name(),
        };
        check_token("name", &name)?;

        let zone = text(args.zone, file.zone).unwrap_or_else(|| DEFAULT_ZONE.into());
        topology::validate_zone(&zone).map_err(|e| invalid("zone", &zone, e.reason))?;
        let kind_text = text(args.kind, file.kind).unwrap_or_else(|| "instance".into());
        let kind = kind_text
            .parse::<NodeKind>()
            .map_err(|_| invalid("kind", &kind_text, "expected elastic-metal or instance"))?;
        let topology = match args.topology.or(file.topology) {
            Some(path) => {
                let topology = read_topology(&path)?;
                check_against_topology(&topology, &path, &name, &zone, kind)?;
                topology
            }
            None => Topology::default(),
        };

        let mut capabilities = args.capabilities.or(file.capabilities).unwrap_or_default();
        for capability in &capabilities {
            check_token("capabilities", capability)?;
        }
        capabilities.sort();
        capabilities.dedup();

        let nats = args
            .nats
            .or(file.nats)
            .unwrap_or_else(|| vec![DEFAULT_NATS.into()]);
        check_nats_urls(&nats)?;

        let listen_text = text(args.listen, file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = parse_addr("listen", &listen_text)?;
        let advertise = match text(args.advertise, file.advertise) {
            Some(a) if parse_addr("advertise", &a)?.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    &a,
                    "peers cannot dial an unspecified address",
                ))
            }
            Some(a) => parse_addr("advertise", &a)?,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    "",
                    format!("required when listen is {listen}: give the address peers dial"),
                ))
            }
            None => listen,
        };

        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let secret = match args.secret_file.or(file.secret_file) {
            Some(path) => read_secret(&path)?,
            None => match env("MESH_SECRET") {
                Some(s) if s.trim().is_empty() => {
                    return Err(ConfigError("MESH_SECRET is set but empty".into()))
                }
                Some(s) => Secret(s.trim().to_owned()),
                None => Secret(DEVELOPMENT_SECRET.into()),
            },
        };

        let heartbeat = duration("heartbeat", text(args.heartbeat, file.heartbeat))?
            .unwrap_or(DEFAULT_HEARTBEAT);
        let member_timeout = duration(
            "member_timeout",
            text(args.member_timeout, file.member_timeout),
        )?
        .unwrap_or(DEFAULT_MEMBER_TIMEOUT);
        if member_timeout < heartbeat * 2 {
            return Err(invalid(
                "member_timeout",
                &humantime::format_duration(member_timeout).to_string(),
                format!(
                    "must be at least twice the heartbeat ({})",
                    humantime::format_duration(heartbeat)
                ),
            ));
        }
        let max_message_bytes = args
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if !(64..=crate::wire::MAX_FRAME_BYTES / 2).contains(&max_message_bytes) {
            return Err(invalid(
                "max_message_bytes",
                &max_message_bytes.to_string(),
                format!(
                    "must be between 64 and {}",
                    crate::wire::MAX_FRAME_BYTES / 2
                ),
            ));
        }
        let call_timeout = duration("call_timeout", text(args.call_timeout, file.call_timeout))?
            .unwrap_or(DEFAULT_CALL_TIMEOUT);
        let gateway_max_inflight = args
            .gateway_max_inflight
            .or(file.gateway_max_inflight)
            .unwrap_or(DEFAULT_GATEWAY_MAX_INFLIGHT);
        if gateway_max_inflight == 0 {
            return Err(invalid(
                "gateway_max_inflight",
                "0",
                "allow at least one request",
            ));
        }
        // A call request may be twice max_message_bytes: the budget must
        // hold one, or the largest calls would be refused forever.
        let largest_call = max_message_bytes * 2;
        let gateway_max_inflight_bytes = args
            .gateway_max_inflight_bytes
            .or(file.gateway_max_inflight_bytes)
            .unwrap_or(largest_call * DEFAULT_GATEWAY_LARGEST_CALLS);
        if gateway_max_inflight_bytes < largest_call {
            return Err(invalid(
                "gateway_max_inflight_bytes",
                &gateway_max_inflight_bytes.to_string(),
                format!(
                    "must be at least twice max_message_bytes ({largest_call}), \
                     the largest call request"
                ),
            ));
        }
        let snapshots_text = text(args.snapshots, file.snapshots);
        let snapshots_shared = snapshots_text.is_some();
        let snapshots = snapshot_target(
            snapshots_text,
            text(args.s3_endpoint, file.s3_endpoint),
            text(args.s3_region, file.s3_region),
            &data_dir,
        )?;
        let snapshot_interval = duration(
            "snapshot_interval",
            text(args.snapshot_interval, file.snapshot_interval),
        )?
        .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL);
        let snapshot_keep = args
            .snapshot_keep
            .or(file.snapshot_keep)
            .unwrap_or(DEFAULT_SNAPSHOT_KEEP);
        if snapshot_keep == 0 {
            return Err(invalid("snapshot_keep", "0", "keep at least one snapshot"));
        }
        let snapshot_max_age = duration(
            "snapshot_max_age",
            text(args.snapshot_max_age, file.snapshot_max_age),
        )?;
        let lease = duration("lease", text(args.lease, file.lease))?.unwrap_or(DEFAULT_LEASE);
        let link_timeout = duration("link_timeout", text(args.link_timeout, file.link_timeout))?
            .unwrap_or(DEFAULT_LINK_TIMEOUT);
        let passivate_after = match text(args.passivate_after, file.passivate_after) {
            Some(off) if off == "off" => None,
            given => Some(duration("passivate_after", given)?.unwrap_or(DEFAULT_PASSIVATE_AFTER)),
        };
        let kv_replicas = args.kv_replicas.or(file.kv_replicas).unwrap_or(1);
        let metrics_listen = text(args.metrics_listen, file.metrics_listen)
            .map(|a| parse_addr("metrics_listen", &a))
            .transpose()?;
        if !(1..=5).contains(&kv_replicas) {
            return Err(invalid(
                "kv_replicas",
                &kv_replicas.to_string(),
                "JetStream allows 1 to 5 replicas",
            ));
        }
        let gateway_allow = args.gateway_allow.or(file.gateway_allow);
        for kind in gateway_allow.iter().flatten() {
            check_token("gateway_allow", kind)?;
        }
        let workers = args.workers.or(file.workers).unwrap_or(0);
        if workers > MAX_WORKERS {
            return Err(invalid(
                "workers",
                &workers.to_string(),
                format!("must be at most {MAX_WORKERS}"),
            ));
        }
        let exec_allow = args.exec_allow.or(file.exec_allow).unwrap_or_default();
        if let Some(bad) = exec_allow
            .iter()
            .find(|p| p.trim().is_empty() || p.contains(' '))
        {
            return Err(invalid(
                "exec_allow",
                bad,
                "give program names or paths, without arguments or spaces",
            ));
        }
        let wire_versions = match text(args.wire_versions, file.wire_versions) {
            Some(t) => t
                .parse()
                .map_err(|e: String| invalid("wire_versions", &t, e))?,
            None => crate::wire::VersionRange::BUILD,
        };
        if lease < Duration::from_millis(200) {
            return Err(invalid(
                "lease",
                &humantime::format_duration(lease).to_string(),
                "must be at least 200ms",
            ));
        }

        let nats_auth = crate::nats_auth::NatsAuth::resolve(
            args.nats_auth.or(crate::nats_auth::NatsAuthArgs {
                nats_user: file.nats_user,
                nats_password_file: file.nats_password_file,
                nats_token_file: file.nats_token_file,
                nats_nkey_file: file.nats_nkey_file,
                nats_creds: file.nats_creds,
                nats_ca: file.nats_ca,
                nats_cert: file.nats_cert,
                nats_key: file.nats_key,
            }),
            &env,
        )?;
        // Checked last: every other mistake is reported first.
        let links = link_security(
            args.insecure || file.insecure.unwrap_or(false),
            args.tls_ca.or(file.tls_ca),
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        )?;

        Ok(Config {
            cluster,
            name,
            zone,
            kind,
            capabilities,
            nats,
            listen,
            advertise,
            data_dir,
            secret,
            heartbeat,
            member_timeout,
            max_message_bytes,
            call_timeout,
            gateway_max_inflight,
            gateway_max_inflight_bytes,
            snapshots,
            snapshot_interval,
            snapshot_keep,
            snapshot_max_age,
            lease,
            link_timeout,
            passivate_after,
            kv_replicas,
            metrics_listen,
            gateway_allow,
            topology,
            snapshots_shared,
            workers,
            exec_allow,
            wire_versions,
            links,
            nats_auth,
        })
    }
}

/// Reads and checks a topology file; an error names the file and the
/// problem in one line.
pub fn read_topology(path: &Path) -> Result<Topology, ConfigError> {
    let shown = path.display();
    let text = read_bounded(path, MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError(format!("cannot read topology file {shown}: {e}")))?;
    Topology::parse(&text).map_err(|e| ConfigError(format!("{shown}: {e}")))
}

/// Checks that this node's zone is known to the topology, and that its
/// inventory entry, if any, agrees with the node's settings.
fn check_against_topology(
    topology: &Topology,
    path: &Path,
    name: &str,
    zone: &str,
    kind: NodeKind,
) -> Result<(), ConfigError> {
    let shown = path.display();
    if !topology.knows_zone(zone) {
        let why = format!("not a Scaleway zone and not declared in {shown}");
        return Err(invalid("zone", zone, why));
    }
    if let Some(listed) = topology.node(name) {
        if listed.zone != zone {
            let why = format!("{shown} puts node {name} in zone {}", listed.zone);
            return Err(invalid("zone", zone, why));
        }
        if listed.kind != kind {
            let why = format!("{shown} says node {name} is of kind {}", listed.kind);
            return Err(invalid("kind", kind.as_str(), why));
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display();
    let text = read_bounded(path, MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError(format!("cannot read config file {shown}: {e}")))?;
    parse_file(&shown.to_string(), &text)
}

/// Reads a small file, refusing one larger than `limit` bytes without
/// reading it whole.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if read as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than the limit of {limit} bytes"
        )));
    }
    Ok(text)
}

/// The file's `nats`: one URL, or a list of them.
fn one_or_more_urls<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Urls;
    impl<'de> serde::de::Visitor<'de> for Urls {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a NATS URL or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Vec<String>, E> {
            Ok(vec![url.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }
    deserializer.deserialize_any(Urls).map(Some)
}

/// Parses configuration file text; `shown` names it in errors. Public for
/// fuzzing.
#[doc(hidden)]
pub fn parse_file_text(shown: &str, text: &str) -> Result<(), ConfigError> {
    parse_file(shown, text).map(|_| ())
}

fn parse_file(shown: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| bytecount_lines(&text.as_bytes()[..span.start.min(text.len())]));
        let message = e.message().replace('\n', " ");
        match line {
            Some(line) => ConfigError(format!("{shown} line {line}: {message}")),
            None => ConfigError(format!("{shown}: {message}")),
        }
    })
}

/// Links use TLS when its three files are given, plaintext only when asked.
fn link_security(
    insecure: bool,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<LinkSecurity, ConfigError> {
    match (insecure, ca, cert, key) {
        (true, None, None, None) => Ok(LinkSecurity::Insecure),
        (true, ..) => Err(ConfigError(
            "insecure is set together with tls_ca/tls_cert/tls_key: choose one".into(),
        )),
        (false, Some(ca), Some(cert), Some(key)) => Ok(LinkSecurity::Tls { ca, cert, key }),
        (false, None, None, None) => Err(ConfigError(
            "links need TLS: set tls_ca, tls_cert and tls_key (bootstrap/certs.sh makes \
             them), or insecure = true (--insecure) for a development mesh"
                .into(),
        )),
        (false, ca, cert, _) => {
            let missing = if ca.is_none() {
                "tls_ca"
            } else if cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            };
            Err(ConfigError(format!(
                "{missing} is missing: TLS links need tls_ca, tls_cert and tls_key"
            )))
        }
    }
}

/// The 1-based line of the byte after `before`.
fn bytecount_lines(before: &[u8]) -> usize {
    before.iter().filter(|b| **b == b'\n').count() + 1
}

fn snapshot_target(
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    data_dir: &Path,
) -> Result<SnapshotTarget, ConfigError> {
    let Some(text) = url else {
        return Ok(SnapshotTarget::File(data_dir.join("snapshots")));
    };
    let parsed = url::Url::parse(&text).map_err(|e| invalid("snapshots", &text, e))?;
    match parsed.scheme() {
        "file" => Ok(SnapshotTarget::File(PathBuf::from(parsed.path()))),
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("snapshots", &text, "expected s3://bucket/prefix"))?;
            if let Some(e) = &endpoint {
                url::Url::parse(e).map_err(|err| invalid("s3_endpoint", e, err))?;
            }
            Ok(SnapshotTarget::S3 {
                bucket: bucket.to_owned(),
                prefix: parsed.path().trim_matches('/').to_owned(),
                endpoint,
                region,
            })
        }
        other => Err(invalid(
            "snapshots",
            &text,
            format!("scheme {other}:// is not supported; use s3:// or file://"),
        )),
    }
}

fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let shown = path.display();
    let text = read_bounded(path, MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError(format!("cannot read secret_file {shown}: {e}")))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError(format!("secret_file {shown} is empty")));
    }
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            file = %shown,
            bytes = secret.len(),
            "the cluster secret is short: use at least 32 random bytes"
        );
    }
    Ok(Secret(secret.to_owned()))
}

/// Checks a name that ends up in NATS subjects and log fields.
fn check_token(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            value,
            "use 1 to 64 lowercase letters, digits, '-' or '_'",
        ))
    }
}

fn check_nats_urls(urls: &[String]) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(invalid("nats", "", "give at least one URL"));
    }
    for url in urls {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| invalid("nats", url, e))?;
    }
    Ok(())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, value, "expected IP:PORT, such as 10.0.1.7:7400"))
}

fn duration(key: &str, value: Option<String>) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let parsed =
        humantime::parse_duration(&value).map_err(|e| invalid(key, &value, e.to_string()))?;
    if parsed.is_zero() {
        return Err(invalid(key, &value, "must be more than zero"));
    }
    Ok(Some(parsed))
}

/// The host name, made into a valid node name.
fn default_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().to_lowercase();
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "node".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests;
