//! Zones, node kinds and placement for agent-mesh.
//!
//! Pure logic, no I/O, so that every node computes the same answer from the
//! same inputs. Layout, in the order a placement decision uses it:
//! - [`zone`]: zone names (`fr-par-1`) and the region they belong to;
//! - [`kind`]: node kinds (bare-metal Elastic Metal or VM instance);
//! - [`file`]: the topology file: extra zones, the node inventory, and a
//!   placement policy per agent kind, checked line by line;
//! - [`policy`]: which nodes may host an agent kind, in which order;
//! - [`placement`]: rendezvous hashing, the score every rank is built on.

pub mod file;
pub mod kind;
pub mod placement;
pub mod policy;
pub mod zone;

pub use file::{Topology, TopologyError};
pub use kind::{NodeKind, ParseKindError};
pub use placement::{distance, place, place_near, score, Candidate, Distance};
pub use policy::{place_with_load, rank, rank_near, NodeInfo, Policy};
pub use zone::{region_of, validate_zone, ZoneError};
