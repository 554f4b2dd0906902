//! The operator API's messages: one JSON [`Request`] per line on the
//! appliance's control socket, one JSON [`Response`] per line. Their meaning
//! is the appliance core's ([`crate::core::node::Node::control`]); the socket
//! and the client are in [`crate::shell::control`].

use serde::{Deserialize, Serialize};

use hinan_vpn::endpoint::MacLocation;

use crate::core::replica::RaftStatus;
use crate::core::state::{Command, NodeId};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Raft status and how this appliance sees its peers.
    Status,
    /// The whole applied state.
    State,
    /// Commits a command; answers once applied here, or with why not.
    Propose {
        command: Command,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Answers once this appliance has applied log index `index`, with the time.
    WaitApplied {
        index: u64,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Adds (`add`) or removes a voter; answers once the change is applied here.
    Membership {
        id: NodeId,
        add: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Detection events recorded here with sequence number above `since`.
    Events {
        #[serde(default)]
        since: u64,
    },
    /// The campus's L2 VPN saw `mac` move between bridge ports: `from`/`to`
    /// are "local" (this campus's segment) or a VPN peer's name (its site).
    /// A VM's MAC arriving at a campus commits the VM's new location.
    VpnMacMoved {
        mac: String,
        from: MacLocation,
        to: MacLocation,
    },
}

/// How this appliance sees one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    /// `up`, `degraded`, `down` or `unknown`.
    pub health: String,
    /// Path name → up.
    pub paths: std::collections::BTreeMap<String, bool>,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub name: String,
    pub site: String,
    pub raft: RaftStatus,
    pub peers: Vec<PeerView>,
    /// VMs this appliance checks now (as their P1, or as P2 while P1 is gone).
    #[serde(default)]
    pub watching: Vec<String>,
}

/// A failure-detection event as recorded by the appliance that saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// Wall-clock time at this appliance, in µs since the Unix epoch.
    pub at_unix_us: u64,
    /// `site-down`, `site-up`, `path-down`, `path-up`, `vm-failed`, …
    pub kind: String,
    pub peer: Option<NodeId>,
    pub path: Option<String>,
    /// The VM the event is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub detail: String,
}

/// The answer to [`Request::WaitApplied`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedReply {
    pub applied: u64,
    /// Wall-clock time at this appliance when it saw the index applied, µs since the epoch.
    pub at_unix_us: u64,
}

/// The answer to [`Request::Propose`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposeReply {
    pub index: u64,
    /// From the request's arrival to the command's application here.
    pub latency_us: u64,
}

/// Every answer: `ok` with a `result`, or an `error` an operator can act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        Response {
            ok: true,
            error: None,
            result: serde_json::to_value(result).ok(),
        }
    }

    pub fn err(error: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            error: Some(error.to_string()),
            result: None,
        }
    }
}
