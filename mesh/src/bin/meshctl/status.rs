//! `meshctl status`: gathers the roster, a member view, each node's status
//! and the state of the NATS servers; `mesh::status` puts them together.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::gateway::{AdminRequest, MembersReply, NodeStatus};
use mesh::status::{assess, nodes_to_ask, render, Inputs};
use mesh::{roster, subjects};

use super::{Ctl, Failure};

/// How long probing one NATS server may take.
const NATS_PROBE: Duration = Duration::from_secs(2);
/// A bucket replica silent for this long counts as a server down, before
/// JetStream itself marks it offline.
const REPLICA_SILENT: Duration = Duration::from_secs(5);

impl Ctl {
    /// Prints the cluster at a glance.
    pub(super) async fn status(&self, nats: &[String], json: bool) -> Result<(), Failure> {
        let mut inputs = Inputs {
            cluster: self.cluster.clone(),
            ..Inputs::default()
        };
        let js = async_nats::jetstream::new(self.client.clone());
        // Without the bucket no node of this release ever ran: the member
        // view is all there is.
        if let Ok(bucket) = js.get_key_value(roster::bucket_name(&self.cluster)).await {
            match roster::read(&bucket).await {
                Ok(entries) => inputs.roster = entries,
                Err(e) => inputs
                    .nats_down
                    .push(format!("cannot read the roster: {e}")),
            }
        }
        inputs.view = match self
            .admin(subjects::admin(&self.cluster), &AdminRequest::Members)
            .await
        {
            Ok(value) => serde_json::from_value::<MembersReply>(value).ok(),
            Err(Failure(4 | 5, _)) => None,
            Err(e) => return Err(e),
        };

        let names = nodes_to_ask(inputs.view.as_ref(), &inputs.roster);
        let asks = names.iter().map(|name| {
            let subject = subjects::node_admin(&self.cluster, name);
            async move { self.admin(subject, &AdminRequest::Status).await }
        });
        let answers = futures::future::join_all(asks).await;
        inputs.answers = names
            .into_iter()
            .zip(answers)
            .filter_map(|(name, answer)| {
                let status = serde_json::from_value::<NodeStatus>(answer.ok()?).ok()?;
                Some((name, status))
            })
            .collect::<BTreeMap<_, _>>();
        inputs.nats_down.extend(self.nats_servers_down(nats).await);
        inputs.now_ms = roster::now_ms();

        let report = assess(inputs);
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("encodes")
            );
        } else {
            print!("{}", render(&report));
        }
        Ok(())
    }

    /// The NATS servers that look down: each URL given to `meshctl` that
    /// does not accept a connection, and each server the ownership bucket's
    /// replica group counts as offline.
    async fn nats_servers_down(&self, urls: &[String]) -> Vec<String> {
        let mut down = Vec::new();
        let probes = urls.iter().map(|url| async move {
            let probe = async {
                let addr = url.parse::<async_nats::ServerAddr>()?;
                let client = self
                    .auth
                    .options()
                    .await?
                    .name("meshctl probe")
                    .connection_timeout(NATS_PROBE)
                    .connect(addr)
                    .await?;
                client.flush().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            match tokio::time::timeout(NATS_PROBE * 2, probe).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("NATS server {url} is unreachable: {e}")),
                Err(_) => Some(format!("NATS server {url} does not answer")),
            }
        });
        down.extend(
            futures::future::join_all(probes)
                .await
                .into_iter()
                .flatten(),
        );

        let js = async_nats::jetstream::new(self.client.clone());
        let stream = format!("KV_{}", mesh::ownership::bucket_name(&self.cluster));
        if let Ok(mut stream) = js.get_stream(&stream).await {
            if let Ok(info) = stream.info().await {
                if let Some(cluster) = &info.cluster {
                    if cluster.leader.is_none() {
                        down.push("the ownership bucket has no leader: placement is frozen".into());
                    }
                    for peer in &cluster.replicas {
                        // A new leader that never heard from a replica
                        // reports it behind with no last contact.
                        let why = if peer.offline {
                            "offline".to_owned()
                        } else if peer.active > REPLICA_SILENT {
                            let silent = Duration::from_secs(peer.active.as_secs());
                            format!("silent for {}", humantime::format_duration(silent))
                        } else if !peer.current && peer.active.is_zero() {
                            "behind and silent since the leader changed".to_owned()
                        } else {
                            continue;
                        };
                        down.push(format!(
                            "NATS server {} looks down: its replica of the ownership \
                             bucket is {why}",
                            peer.name
                        ));
                    }
                }
            }
        }
        down
    }
}
