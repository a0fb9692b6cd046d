//! Gateway call requests, through the bounds and the parser the node uses,
//! then the agent name.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = mesh::gateway::parse_call(data, 64 * 1024) {
        let _ = request.agent.parse::<actors::AgentId>();
    }
});
