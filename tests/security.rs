//! Security end to end: signed announcements, bounded input on the link
//! port and the gateway, and the gateway allow-list, against real
//! `nats-server` and `mesh-node` processes.

#![allow(missing_docs)]

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::StreamExt;
use mesh::subjects;
use serde_json::json;
use support::{error_code, ok, wait_until, Client, MeshNode, Nats, NodeSpec, TestCa, TlsFiles};

/// Waits until `node`'s log contains `needle`; a timeout shows the log's
/// last lines.
async fn logged(node: &MeshNode, needle: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        while !node.log_text().contains(needle) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    if waited.await.is_err() {
        let log = node.log_text();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("mesh::"))
            .rev()
            .take(30)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "timed out waiting for {} to log {needle:?}; its log ends:\n{}",
            node.name(),
            tail.join("\n")
        );
    }
}

/// The resident set size of a process, in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// The link address `node` announces.
async fn link_address(client: &Client, node: &str) -> String {
    let members = client.members(node).await.expect("node answers");
    members
        .into_iter()
        .find(|m| m.this)
        .expect("the node lists itself")
        .address
}

#[tokio::test]
async fn forged_and_replayed_announcements_are_ignored_and_logged() {
    let nats = Nats::start().await;
    let (mut nodes, client) = support::start_mesh(&nats, "sig", 2, &["fr-par-1"]).await;

    // Capture a genuine announcement of node-1 as it travels.
    let mut tap = client
        .nats
        .subscribe(subjects::announce("sig"))
        .await
        .unwrap();
    let captured = loop {
        let msg = tap.next().await.expect("announcements flow");
        if String::from_utf8_lossy(&msg.payload).contains("node-1") {
            break msg.payload;
        }
    };

    // A forgery: a well-formed announcement of a node that does not exist,
    // pointing at an address an attacker controls, without the secret.
    let fake = json!({
        "v": 1, "name": "intruder", "zone": "fr-par-1", "kind": "instance",
        "capabilities": [], "link": "127.0.0.1:9", "software": "0.1.0",
        "wire_min": 1, "wire_max": 1, "incarnation": 1, "started_ms": 1,
    });
    let forged = json!({
        "ts_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        "body": fake.to_string(),
        "mac": "00".repeat(32),
    });
    for body in [forged.to_string(), fake.to_string()] {
        client
            .nats
            .publish(subjects::announce("sig"), body.into())
            .await
            .unwrap();
    }
    client.nats.flush().await.unwrap();
    logged(&nodes[0], "refused announcement: bad signature").await;
    logged(&nodes[0], "refused announcement: malformed envelope").await;
    logged(&nodes[0], "claimed_sender=\"intruder\"").await;
    let names: Vec<String> = client
        .members("node-0")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["node-0", "node-1"], "a forged node joined");

    // node-1 stops and says goodbye; replaying its old announcement must
    // not bring it back (node-0 would dial a dead address).
    nodes[1].signal(libc::SIGTERM);
    nodes[1].exited(Duration::from_secs(15)).await;
    wait_until("node-0 to drop node-1", Duration::from_secs(10), || async {
        let members = client.members("node-0").await?;
        (members.len() == 1).then_some(())
    })
    .await;
    client
        .nats
        .publish(subjects::announce("sig"), captured)
        .await
        .unwrap();
    client.nats.flush().await.unwrap();
    logged(&nodes[0], "refused announcement: replayed").await;
    let members = client.members("node-0").await.unwrap();
    assert_eq!(members.len(), 1, "a replayed announcement revived node-1");
    drop(nodes);
}

/// Sends `bytes` to the link port at `address` and waits for the node to
/// close the connection; returns the local address used.
fn send_and_wait_for_close(address: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).expect("link port accepts");
    let local = stream.local_addr().unwrap().to_string();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The node may close before everything is written: that is fine.
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return local,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return local,
            Err(e) => panic!("the node did not close a connection sending junk: {e}"),
        }
    }
}

#[tokio::test]
async fn junk_on_the_link_port_closes_that_connection_only() {
    let nats = Nats::start().await;
    let (mut nodes, client) = support::start_mesh(&nats, "junk", 2, &["fr-par-1"]).await;
    let address = link_address(&client, "node-0").await;
    ok(client
        .call(Some("node-0"), "counter/c", json!({"add": 1}))
        .await);
    let before = rss_kib(nodes[0].pid());

    let mut huge = (1u64 << 30).to_be_bytes().to_vec();
    huge.extend(std::iter::repeat_n(0u8, 256 * 1024));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", garbage),
        ("http", b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n".to_vec()),
        ("ff", vec![0xFF; 8]),
        ("1 GiB frame", huge),
    ];
    for (what, bytes) in cases {
        let address = address.clone();
        let local = tokio::task::spawn_blocking(move || send_and_wait_for_close(&address, &bytes))
            .await
            .unwrap();
        // The node names the connection it refused.
        logged(&nodes[0], &format!("address={local}")).await;
        // The established link was not disturbed.
        let linked = client.linked_names("node-0").await.expect("node answers");
        assert_eq!(linked, ["node-0", "node-1"], "after {what}");
        let reply = ok(client
            .call(Some("node-1"), "counter/c", json!({"get": {}}))
            .await);
        assert_eq!(reply, json!({"value": 1}), "after {what}");
    }
    let after = rss_kib(nodes[0].pid());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB: junk made the node allocate"
    );
    let log = nodes[0].log_text();
    assert!(!log.contains("link lost"), "a link dropped:\n{log}");
    drop(nodes.drain(..));
}

#[tokio::test]
async fn oversized_and_deeply_nested_gateway_json_gets_an_error_reply() {
    let nats = Nats::start().await;
    let mut spec = NodeSpec::new("gw", "node-0", "fr-par-1");
    spec.extra = vec!["--gateway-allow".into(), "counter,echo".into()];
    // Requests above twice this are too large, well under NATS's 1 MiB.
    spec.extra
        .extend(["--max-message-bytes".into(), "65536".into()]);
    let node = MeshNode::start(&nats, spec);
    let client = Client::connect(&nats, "gw").await;
    client.converged(&[&node]).await;

    let big = format!(
        r#"{{"agent":"counter/a","msg":{{"add":1}},"pad":"{}"}}"#,
        "x".repeat(200 << 10)
    );
    assert_eq!(
        error_code(client.raw_call("node-0", big.as_bytes()).await),
        "too_large"
    );
    let nested = format!(
        r#"{{"agent":"counter/a","msg":{}{}}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let reply = client.raw_call("node-0", nested.as_bytes()).await;
    match reply {
        mesh::gateway::Response::Error(e) => {
            assert_eq!(e.code, "bad_request");
            assert!(e.message.contains("nests"), "{}", e.message);
        }
        other => panic!("deep nesting accepted: {other:?}"),
    }
    // Operator requests are bounded too.
    let admin = format!(r#"{{"op":"members","x":{}}}"#, "[".repeat(70_000));
    let answer = client
        .nats
        .request(subjects::node_admin("gw", "node-0"), admin.into())
        .await
        .unwrap();
    let answer: mesh::gateway::Response = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(error_code(answer), "too_large");

    // The allow-list: relay is a kind the node runs, but not open.
    let refused = client
        .call(
            Some("node-0"),
            "relay/r",
            json!({"to": "echo/e", "msg": "hi"}),
        )
        .await;
    assert_eq!(error_code(refused), "forbidden");
    logged(&node, "refused a gateway request").await;

    // The node still serves.
    let reply = ok(client
        .call(Some("node-0"), "counter/a", json!({"add": 2}))
        .await);
    assert_eq!(reply, json!({"value": 2}));
}

#[tokio::test]
async fn tls_links_refuse_wrong_ca_expired_and_stolen_certificates_and_a_wrong_secret() {
    let nats = Nats::start().await;
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let spec = |name: &str, tls: TlsFiles| {
        let mut spec = NodeSpec::new("tls", name, "fr-par-1");
        spec.tls = Some(tls);
        spec
    };
    // node-1 logs everything it can: still no secret, no handshake digest.
    let mut verbose = spec("node-1", ca.node("node-1", 30));
    verbose.env = vec![("RUST_LOG".into(), "trace".into())];
    let nodes = [
        MeshNode::start(&nats, spec("node-0", ca.node("node-0", 30))),
        MeshNode::start(&nats, verbose),
    ];
    let client = Client::connect(&nats, "tls").await;
    client.converged(&nodes.iter().collect::<Vec<_>>()).await;
    ok(client
        .call(Some("node-1"), "counter/t", json!({"add": 1}))
        .await);
    assert!(nodes[0].log_text().contains("link up peer=node-1"));

    // Intruders sort before node-0, so they dial the mesh's nodes.
    let mut wrong_ca = other_ca.node("a-wrong-ca", 30);
    wrong_ca.ca = ca.dir.path().join("ca.crt");
    let stolen = TlsFiles {
        ca: ca.dir.path().join("ca.crt"),
        cert: ca.dir.path().join("node-1.crt"),
        key: ca.dir.path().join("node-1.key"),
    };
    let mut wrong_secret = spec("d-wrong-secret", ca.node("d-wrong-secret", 30));
    wrong_secret.secret = "another-secret-0123456789".into();
    let intruders = [
        MeshNode::start(&nats, spec("a-wrong-ca", wrong_ca)),
        MeshNode::start(&nats, spec("b-expired", ca.node("b-expired", -1))),
        MeshNode::start(&nats, spec("c-stolen", stolen)),
        MeshNode::start(&nats, wrong_secret),
    ];

    // Both sides say why.
    // Every CA certs.sh makes has the same name: the wrong CA's signature
    // is what fails.
    logged(&nodes[0], "invalid peer certificate: BadSignature").await;
    logged(&nodes[0], "invalid peer certificate: Expired").await;
    logged(&nodes[0], "link refused: TLS handshake failed").await;
    logged(&nodes[0], "certificate and node name disagree").await;
    logged(&nodes[0], "claimed_sender=\"d-wrong-secret\"").await;
    for intruder in &intruders[..2] {
        logged(intruder, "cannot dial peer").await;
    }
    logged(
        &intruders[2],
        "link refused: the connection closed before authenticating",
    )
    .await;
    logged(&intruders[3], "refused announcement: bad signature").await;

    // The mesh is undisturbed: its two nodes are linked to each other only.
    for node in ["node-0", "node-1"] {
        let linked = client.linked_names(node).await.expect("node answers");
        assert_eq!(linked, ["node-0", "node-1"], "{node}");
        let members = client.members(node).await.unwrap();
        assert!(!members.iter().any(|m| m.name == "d-wrong-secret"));
    }
    let reply = ok(client
        .call(Some("node-0"), "counter/t", json!({"get": {}}))
        .await);
    assert_eq!(reply, json!({"value": 1}));
    assert!(!nodes[0].log_text().contains("link lost peer=node-1"));
    let log = nodes[1].log_text();
    assert!(log.contains("TRACE"), "node-1 did not log at trace level");
    for secret in ["test-secret-0123456789", "auth state", "ChallengeReply"] {
        let line = log.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "node-1 logged {secret:?}: {line:?}");
    }
}

#[tokio::test]
async fn a_plaintext_peer_cannot_link_to_a_tls_node_and_insecure_is_warned_about() {
    let nats = Nats::start().await;
    let ca = TestCa::new();
    let mut secure = NodeSpec::new("mixed", "node-0", "fr-par-1");
    secure.tls = Some(ca.node("node-0", 30));
    // "a-plain" sorts first, so it is the one that dials node-0.
    let nodes = [
        MeshNode::start(&nats, secure),
        MeshNode::start(&nats, NodeSpec::new("mixed", "a-plain", "fr-par-1")),
    ];
    let client = Client::connect(&nats, "mixed").await;

    logged(&nodes[0], "link refused: TLS handshake failed").await;
    logged(
        &nodes[1],
        "link refused: the connection closed before authenticating",
    )
    .await;
    logged(&nodes[1], "links are plaintext (insecure)").await;
    assert!(!nodes[0].log_text().contains("links are plaintext"));

    // Both see each other's announcements, yet neither is linked.
    for node in ["node-0", "a-plain"] {
        let what = format!("{node} to see both nodes");
        wait_until(&what, Duration::from_secs(10), || async {
            let members = client.members(node).await?;
            (members.len() == 2).then_some(())
        })
        .await;
        let linked = client.linked_names(node).await.expect("node answers");
        assert_eq!(linked, [node], "{node}");
    }
}

/// Connects as `user` of a server made with `bootstrap/nats-auth.sh`;
/// server errors (permission violations) go to the returned channel.
async fn connect_as(
    nats: &Nats,
    user: &str,
    password_file: &std::path::Path,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let password = std::fs::read_to_string(password_file).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("a user of auth.conf connects");
    (client, rx)
}

/// Waits for a server error containing `needle`.
async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) {
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = errors.recv().await {
            if e.contains(needle) {
                return;
            }
        }
        panic!("the connection closed before {needle:?}");
    });
    wait.await
        .unwrap_or_else(|_| panic!("no permission violation for {needle:?}"));
}

#[tokio::test]
async fn client_role_credentials_reach_the_gateway_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/nats-auth.sh");
    let out = std::process::Command::new(script)
        .arg("perm")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let nats = Nats::start_with_config(&dir.path().join("auth.conf")).await;

    let mut spec = NodeSpec::new("perm", "node-0", "fr-par-1");
    spec.extra = vec![
        "--nats-user".into(),
        "mesh-node".into(),
        "--nats-password-file".into(),
    ];
    spec.extra
        .push(dir.path().join("node.password").to_str().unwrap().into());
    let node = MeshNode::start(&nats, spec);
    let (operator, _) = connect_as(&nats, "mesh-node", &dir.path().join("node.password")).await;
    let operator = Client {
        nats: operator,
        cluster: "perm".into(),
    };
    operator.converged(&[&node]).await;

    // Without credentials, nothing.
    let anonymous = async_nats::ConnectOptions::new().connect(nats.url()).await;
    assert!(anonymous.is_err(), "an anonymous client connected");

    let (client, mut errors) =
        connect_as(&nats, "mesh-client", &dir.path().join("client.password")).await;
    // The gateway answers a client.
    let request = json!({"agent": "counter/p", "msg": {"add": 3}}).to_string();
    let reply = client
        .request(subjects::node_gateway("perm", "node-0"), request.into())
        .await
        .expect("the gateway answers a client");
    let reply: mesh::gateway::Response = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(ok(reply), json!({"value": 3}));

    // Announcements, operator requests and the buckets are out of reach.
    client
        .publish(subjects::announce("perm"), "{}".into())
        .await
        .unwrap();
    violation(
        &mut errors,
        "Permissions Violation for Publish to \"mesh.perm.announce\"",
    )
    .await;
    client
        .publish(subjects::admin("perm"), "{\"op\":\"members\"}".into())
        .await
        .unwrap();
    violation(
        &mut errors,
        "Permissions Violation for Publish to \"mesh.perm.admin\"",
    )
    .await;
    for subject in [
        "mesh.perm.announce",
        "$KV.mesh-perm-owners.>",
        "mesh.perm.>",
    ] {
        let _sub = client.subscribe(subject).await.unwrap();
        violation(&mut errors, &format!("Subscription to \"{subject}\"")).await;
    }
    // The forbidden announcement never reached the node.
    assert!(!node.log_text().contains("refused announcement"));
    let members = operator.members("node-0").await.unwrap();
    assert_eq!(members.len(), 1);

    // meshctl logs in with the node role; its output never shows the
    // password, and without credentials it is turned away.
    let password = std::fs::read_to_string(dir.path().join("node.password")).unwrap();
    let meshctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["--nats", &nats.url(), "--cluster", "perm"])
            .args(args)
            .env_remove("MESH_NATS_PASSWORD")
            .output()
            .unwrap()
    };
    let password_file = dir.path().join("node.password");
    let with_auth = [
        "--nats-user",
        "mesh-node",
        "--nats-password-file",
        password_file.to_str().unwrap(),
    ];
    for command in ["members", "status"] {
        let out = meshctl(&[&with_auth[..], &[command]].concat());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "meshctl {command}: {text}");
        assert!(text.contains("node-0"), "meshctl {command}: {text}");
        assert!(
            !text.contains(password.trim()),
            "meshctl {command} showed the password"
        );
    }
    let out = meshctl(&["members"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test]
async fn nats_over_tls_with_a_password_serves_and_refuses_a_node_without_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/nats-auth.sh");
    let out = std::process::Command::new(script)
        .arg("natstls")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The NATS server's certificate comes from the cluster CA too.
    let ca = TestCa::new();
    let server = ca.node("nats-0", 30);
    let auth = std::fs::read_to_string(dir.path().join("auth.conf")).unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "{auth}\ntls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            server.cert, server.key
        ),
    )
    .unwrap();
    let nats = Nats::start_with_config(&config).await;

    let password = dir.path().join("node.password");
    let login = |spec: &mut NodeSpec| {
        spec.extra = ["--nats-user", "mesh-node", "--nats-password-file"]
            .map(String::from)
            .to_vec();
        spec.extra.push(password.to_str().unwrap().into());
    };
    let mut spec = NodeSpec::new("natstls", "node-0", "fr-par-1");
    login(&mut spec);
    spec.extra.push("--nats-ca".into());
    spec.extra.push(server.ca.to_str().unwrap().into());
    let node = MeshNode::start(&nats, spec);

    // The operator connects through the same settings a node resolves.
    let operator = mesh::nats_auth::NatsAuth::resolve(
        mesh::nats_auth::NatsAuthArgs {
            nats_user: Some("mesh-node".into()),
            nats_password_file: Some(password.clone()),
            nats_ca: Some(server.ca.clone()),
            ..Default::default()
        },
        |_| None,
    )
    .unwrap();
    let operator = mesh::connect_nats(&[nats.url()], "test operator", &operator)
        .await
        .expect("the operator connects over TLS");
    let operator = Client {
        nats: operator,
        cluster: "natstls".into(),
    };
    operator.converged(&[&node]).await;
    let reply = ok(operator
        .call(Some("node-0"), "counter/t", json!({"add": 4}))
        .await);
    assert_eq!(reply, json!({"value": 4}));

    // A node with the password but without the CA cannot trust the server.
    let mut spec = NodeSpec::new("natstls", "node-1", "fr-par-1");
    login(&mut spec);
    let mut lost = MeshNode::start(&nats, spec);
    let status = lost.exited(Duration::from_secs(20)).await;
    assert!(!status.success());
    let log = lost.log_text();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains(std::fs::read_to_string(&password).unwrap().trim()));
}

/// Round trips of gateway calls that cross a link, with TLS links and with
/// plaintext ones: a measurement, printed, not a check.
#[tokio::test]
#[ignore = "a measurement: run by hand with --run-ignored only"]
async fn measure_tls_link_overhead() {
    const CALLS: usize = 2000;
    let nats = Nats::start().await;
    let ca = TestCa::new();
    for tls in [false, true] {
        let cluster = if tls { "measure-tls" } else { "measure-plain" };
        let spec = |name: &str| {
            let mut spec = NodeSpec::new(cluster, name, "fr-par-1");
            spec.tls = tls.then(|| ca.node(name, 30));
            spec
        };
        let nodes = [
            MeshNode::start(&nats, spec("node-0")),
            MeshNode::start(&nats, spec("node-1")),
        ];
        let client = Client::connect(&nats, cluster).await;
        client.converged(&nodes.iter().collect::<Vec<_>>()).await;

        // An agent that lives on node-1, called through node-0.
        let mut i = 0;
        let agent = loop {
            let agent = format!("counter/m{i}");
            ok(client.call(Some("node-1"), &agent, json!({"add": 0})).await);
            if client.locate("node-0", &agent).await == "node-1" {
                break agent;
            }
            i += 1;
        };
        let mut took = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let started = std::time::Instant::now();
            ok(client.call(Some("node-0"), &agent, json!({"add": 1})).await);
            took.push(started.elapsed());
        }
        took.sort();
        let total: Duration = took.iter().sum();
        println!(
            "links {}: {CALLS} calls via a link, mean {:?}, median {:?}, p99 {:?}",
            if tls { "TLS" } else { "plaintext" },
            total / CALLS as u32,
            took[CALLS / 2],
            took[CALLS * 99 / 100]
        );
    }
}

/// Runs `data` through the same calls as fuzz target `target`; whether
/// every call refused it.
fn fuzz_target_refuses(target: &str, data: &[u8]) -> bool {
    match target {
        "codec" => mesh::wire::decode(data).is_err(),
        "gateway" => match mesh::gateway::parse_call(data, 64 * 1024) {
            Ok(request) => request.agent.parse::<actors::AgentId>().is_err(),
            Err(_) => true,
        },
        "snapshot" => {
            let manifest = mesh::snapshot::parse_manifest("fuzz/manifest.json", "fuzz", data);
            let index = mesh::snapshot::decode_index("fuzz/index.bin", data);
            let entry = mesh::snapshot::decode_data_entry("fuzz/data-0.bin", data);
            manifest.is_err() && index.is_err() && entry.is_err()
        }
        "config" => match std::str::from_utf8(data) {
            Ok(text) => mesh::config::parse_file_text("fuzz.toml", text).is_err(),
            Err(_) => true,
        },
        _ => unreachable!("no fuzz target {target}"),
    }
}

/// Every input kept in `fuzz/regressions/<target>/` goes through the same
/// calls as its fuzz target. Crashes `fuzz/run.sh` found (`crash-*`,
/// `oom-*`, `timeout-*`) must no longer panic; the others are hand-made
/// hostile inputs (huge length prefixes, deep nesting) and must be refused.
#[test]
fn fuzz_regression_inputs_are_refused_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut seen = 0;
    for target in ["codec", "gateway", "snapshot", "config"] {
        for entry in std::fs::read_dir(root.join(target)).expect("regressions folder") {
            let path = entry.expect("a readable folder").path();
            let data = std::fs::read(&path).expect("a readable input");
            let refused = fuzz_target_refuses(target, &data);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let found_by_fuzzing = ["crash-", "oom-", "timeout-", "slow-unit-"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            assert!(
                refused || found_by_fuzzing,
                "{} was accepted",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} regression inputs");
}
