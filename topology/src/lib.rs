//! Zones, node kinds and placement for agent-mesh.
//!
//! Pure logic, no I/O, so that every node computes the same answer from the
//! same inputs. Layout, in the order a placement decision uses it:
//! - [`zone`]: zone names (`fr-par-1`) and the region they belong to;
//! - [`kind`]: node kinds (bare-metal Elastic Metal or VM instance);
//! - [`placement`]: which node hosts an agent, by rendezvous hashing.

pub mod kind;
pub mod placement;
pub mod zone;

pub use kind::{NodeKind, ParseKindError};
pub use placement::{distance, place, place_near, score, Candidate, Distance};
pub use zone::{region_of, validate_zone, ZoneError};
