//! The sans-IO core: zones, their serials and change history, and the answer
//! to every request (bytes in, bytes out). No sockets and no clock: the shell
//! passes the source address, the transport and the time.
//!
//! * `zone`: a zone's records, serial and change history;
//! * `query`: answers to questions;
//! * `transfer`: AXFR and IXFR (RFC 1995);
//! * `update`: dynamic updates (RFC 2136);
//! * `tsig`: keys and signatures (RFC 8945);
//! * `notify`: the NOTIFYs owed after a change (RFC 1996);
//! * `services`: the dynamic service records from a [`ServiceView`](crate::view::ServiceView).

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RecordType, TSigResponseContext};

use crate::config::DnsConfig;

mod notify;
mod query;
mod services;
mod transfer;
mod tsig;
mod update;
mod zone;

pub use notify::NotifyJob;
pub use query::Lookup;
pub use zone::zone_key;

use tsig::{Auth, Key};
use zone::{parse_name, Zone};

/// How many changes per zone are kept for IXFR; older serials get a full zone.
pub const HISTORY: usize = 64;
/// The largest UDP answer we send, whatever the client offers (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// A configuration the DNS cannot serve, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DnsConfigError {
    #[error("dns: zone '{zone}': {message}")]
    Zone { zone: String, message: String },
    #[error("dns: key '{key}': {message}")]
    Key { key: String, message: String },
    #[error("dns: {0}")]
    Other(String),
}

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to send back: nothing (drop), or one or more messages.
#[derive(Debug, Default)]
pub struct Reply {
    pub messages: Vec<Vec<u8>>,
    /// The same request bytes (but the ID and the name's case) always get the
    /// same answer until the zones change: the shell may cache it.
    pub cacheable: bool,
}

/// Every zone this appliance serves, and the TSIG keys.
#[derive(Debug)]
pub struct Authority {
    zones: Vec<Zone>,
    keys: BTreeMap<Name, Key>,
    /// Bumped on every change of any zone: cached answers of older generations are stale.
    generation: u64,
    notifies: Vec<NotifyJob>,
    /// Operators' record sets changed by updates here, to replicate.
    record_changes: Vec<(String, Vec<String>)>,
}

impl Authority {
    /// Builds the zones of `cfg`. `serials` are the serials last used (from
    /// the serial file), by origin; every zone starts above its own.
    pub fn new(
        cfg: &DnsConfig,
        serials: &BTreeMap<String, u32>,
    ) -> Result<Authority, DnsConfigError> {
        let keys = tsig::keys(&cfg.keys)?;
        let mut zones = Vec::new();
        for z in &cfg.zones {
            let mut zone = Zone::from_config(z, &keys).map_err(|message| DnsConfigError::Zone {
                zone: z.origin.clone(),
                message,
            })?;
            if zones.iter().any(|o: &Zone| o.origin == zone.origin) {
                return Err(DnsConfigError::Other(format!(
                    "zone '{}' is defined twice",
                    z.origin
                )));
            }
            let key = zone.origin.to_ascii();
            zone.soa.serial = serials.get(&key).copied().unwrap_or(0).saturating_add(1);
            zones.push(zone);
        }
        Ok(Authority {
            zones,
            keys,
            generation: 0,
            notifies: Vec::new(),
            record_changes: Vec::new(),
        })
    }

    /// Bumped on every change: answers cached at an older generation are stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Each zone's origin and current serial (what the serial file keeps).
    pub fn serials(&self) -> BTreeMap<String, u32> {
        self.zones
            .iter()
            .map(|z| (z.origin.to_ascii(), z.soa.serial))
            .collect()
    }

    /// The serial of zone `origin`.
    pub fn serial(&self, origin: &str) -> Option<u32> {
        let origin = parse_name(origin, "origin").ok()?;
        self.zones
            .iter()
            .find(|z| z.origin == origin)
            .map(|z| z.soa.serial)
    }

    /// Zones whose operators' records an update changed here since the last
    /// call, with all their operator records (zone-file lines): what the
    /// cluster should replicate ([`ServiceView::zone_records`](crate::view::ServiceView::zone_records)).
    pub fn take_record_changes(&mut self) -> Vec<(String, Vec<String>)> {
        std::mem::take(&mut self.record_changes)
    }

    /// NOTIFYs owed since the last call.
    pub fn take_notifies(&mut self) -> Vec<NotifyJob> {
        std::mem::take(&mut self.notifies)
    }

    /// Answers one request. `now` is the Unix time in seconds (for TSIG).
    pub fn handle(&mut self, bytes: &[u8], src: IpAddr, transport: Transport, now: u64) -> Reply {
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d; ACLs name it in IPv4.
        let src = src.to_canonical();
        // Too short to carry an ID, or itself a response: never answer (no loops, no reflection).
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            return Reply::default();
        }
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => return formerr(bytes),
        };
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.checking_disabled = req.metadata.checking_disabled;
        resp.queries = req.queries.clone();
        if let Some(e) = &req.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns.flags_mut().dnssec_ok = e.flags().dnssec_ok;
            resp.edns = Some(edns);
        }
        let auth = match req.signature.as_deref() {
            None => Auth::None,
            Some(_) => match self.verify_tsig(bytes, &req, now) {
                Ok(a) => a,
                Err(ctx) => {
                    resp.metadata.response_code = ResponseCode::NotAuth;
                    return finish(resp, Some(ctx), transport, &req);
                }
            },
        };
        let key = match &auth {
            Auth::Key(k, _) => Some(k.clone()),
            Auth::None => None,
        };
        let sign = match auth {
            Auth::Key(_, ctx) => Some(ctx),
            Auth::None => None,
        };
        if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return finish(resp, sign, transport, &req);
        }
        let cacheable_shape = sign.is_none() && req.metadata.op_code == OpCode::Query;
        match req.metadata.op_code {
            OpCode::Query => {
                if req.queries.len() != 1 {
                    resp.metadata.response_code = ResponseCode::FormErr;
                    return finish(resp, sign, transport, &req);
                }
                let q = &req.queries[0];
                match q.query_type() {
                    RecordType::AXFR | RecordType::IXFR => {
                        self.transfer(&req, &mut resp, src, transport, key.as_ref());
                    }
                    _ => self.answer(q, &mut resp),
                }
            }
            OpCode::Update => {
                resp.metadata.response_code = self.update(&req, key.as_ref());
            }
            _ => resp.metadata.response_code = ResponseCode::NotImp,
        }
        let mut reply = finish(resp, sign, transport, &req);
        let q = req.queries.first().map(|q| q.query_type());
        reply.cacheable = cacheable_shape
            && !matches!(q, Some(RecordType::AXFR | RecordType::IXFR))
            && reply.messages.len() == 1
            && reply.messages[0].len() <= 512
            && reply.messages[0][2] & 0x02 == 0;
        reply
    }
}

/// FORMERR for a request whose header is readable but whose body is not.
fn formerr(bytes: &[u8]) -> Reply {
    let mut out = vec![0u8; 12];
    out[0..2].copy_from_slice(&bytes[0..2]);
    // QR, the request's opcode and RD; RCODE 1.
    out[2] = 0x80 | (bytes[2] & 0x79);
    out[3] = 0x01;
    Reply {
        messages: vec![out],
        cacheable: false,
    }
}

/// Encodes, truncates to the UDP payload size and signs.
fn finish(
    mut resp: Message,
    sign: Option<TSigResponseContext>,
    transport: Transport,
    req: &Message,
) -> Reply {
    let limit = match (transport, &req.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        (Transport::Udp, None) => 512,
    };
    let reserve = if sign.is_some() { 120 } else { 0 };
    let mut bytes = match resp.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("cannot encode a response: {e}");
            resp.answers.clear();
            resp.authorities.clear();
            resp.additionals.clear();
            resp.metadata.response_code = ResponseCode::ServFail;
            resp.to_vec().unwrap_or_default()
        }
    };
    if bytes.len() + reserve > limit {
        resp.answers.clear();
        resp.authorities.clear();
        resp.additionals.clear();
        resp.metadata.truncation = true;
        bytes = resp.to_vec().unwrap_or_default();
    }
    if let Some(ctx) = sign {
        match ctx.sign(&bytes) {
            Ok(tsig) => {
                resp.set_signature(tsig);
                bytes = resp.to_vec().unwrap_or_default();
            }
            Err(e) => tracing::warn!("cannot sign a response: {e}"),
        }
    }
    Reply {
        messages: vec![bytes],
        cacheable: false,
    }
}
