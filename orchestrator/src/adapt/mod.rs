//! Pure adapters from the replicated state to each component's input: what
//! the DNS answers (later the NAT bindings and the flow plan).

pub mod dns;
pub mod hypervisors;
