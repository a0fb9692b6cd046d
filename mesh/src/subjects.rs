//! NATS subjects: every subject the mesh uses, in one place.
//!
//! All start with `mesh.<cluster>.`, so two clusters sharing a NATS never
//! hear each other, and permissions can be granted per cluster.

/// Announcements (heartbeats) of every node.
pub fn announce(cluster: &str) -> String {
    format!("mesh.{cluster}.announce")
}

/// Goodbyes of nodes that stop.
pub fn goodbye(cluster: &str) -> String {
    format!("mesh.{cluster}.goodbye")
}

/// Calls into the mesh, served by any node (queue group [`GATEWAY_QUEUE`]).
pub fn gateway(cluster: &str) -> String {
    format!("mesh.{cluster}.gateway")
}

/// Calls into the mesh through one named node.
pub fn node_gateway(cluster: &str, node: &str) -> String {
    format!("mesh.{cluster}.node.{node}.gateway")
}

/// Operator requests (members, agents), served by any node.
pub fn admin(cluster: &str) -> String {
    format!("mesh.{cluster}.admin")
}

/// Operator requests to one named node.
pub fn node_admin(cluster: &str, node: &str) -> String {
    format!("mesh.{cluster}.node.{node}.admin")
}

/// The queue group shared by all nodes' gateway subscriptions.
pub const GATEWAY_QUEUE: &str = "mesh-gateway";
