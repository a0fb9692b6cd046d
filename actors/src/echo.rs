//! `echo`: replies with the message it received.

use crate::agent::{Agent, AgentError, Context};
use crate::json::Json;

/// Replies with whatever JSON it receives; useful to test reachability.
#[derive(Debug)]
pub struct Echo;

impl Agent for Echo {
    const KIND: &'static str = "echo";
    type State = ();
    type Message = Json;
    type Reply = Json;

    async fn handle(_: &mut (), _: &Context, msg: Json) -> Result<Json, AgentError> {
        Ok(msg)
    }
}
