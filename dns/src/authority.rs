//! The sans-IO core: zones, their serials and change history, and the answer
//! to every request (bytes in, bytes out). No sockets and no clock: the shell
//! passes the source address, the transport and the time.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigResponseContext, TSigner};
use ipnet::IpNet;

use crate::config::{DnsConfig, ZoneConfig};
use crate::view::ServiceView;

/// How many changes per zone are kept for IXFR; older serials get a full zone.
pub const HISTORY: usize = 64;
/// The largest UDP answer we send, whatever the client offers (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// TSIG time fudge (s).
const FUDGE: u16 = 300;

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

/// A NOTIFY to send because a zone's serial changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyJob {
    pub target: SocketAddr,
    pub zone: String,
    pub serial: u32,
    soa: Record,
}

impl NotifyJob {
    /// The NOTIFY message (RFC 1996) with message id `id`.
    pub fn message(&self, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
        m.metadata.authoritative = true;
        m.add_query(query(self.soa.name.clone(), RecordType::SOA));
        m.add_answer(self.soa.clone());
        m.to_vec().unwrap_or_default()
    }

    /// Whether `bytes` acknowledges the NOTIFY sent with id `id`.
    pub fn is_ack(bytes: &[u8], id: u16) -> bool {
        Message::from_vec(bytes).is_ok_and(|m| {
            m.metadata.id == id
                && m.metadata.message_type == MessageType::Response
                && m.metadata.op_code == OpCode::Notify
        })
    }
}

type RrMap = BTreeMap<(Name, u16), Vec<Record>>;

/// A TSIG key (the secret never appears in logs).
#[derive(Clone)]
struct Key(TSigner);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.0.signer_name())
    }
}

/// One change of a zone, for IXFR.
#[derive(Debug, Clone)]
struct Change {
    from: u32,
    to: u32,
    removed: Vec<Record>,
    added: Vec<Record>,
}

#[derive(Debug)]
struct Zone {
    origin: Name,
    soa: SOA,
    soa_ttl: u32,
    statics: RrMap,
    /// Operators' records (RFC 2136 updates), replicated through the cluster.
    operator: RrMap,
    dynamic: RrMap,
    history: VecDeque<Change>,
    notify: Vec<SocketAddr>,
    allow_transfer: Vec<IpNet>,
    transfer_key: Option<Name>,
    update_keys: Vec<Name>,
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

fn query(name: Name, rtype: RecordType) -> Query {
    let mut q = Query::query(name, rtype);
    q.set_query_class(DNSClass::IN);
    q
}

fn lower(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

fn parse_name(s: &str, what: &str) -> Result<Name, String> {
    let mut n =
        Name::from_ascii(s).map_err(|e| format!("{what} '{s}' is not a domain name: {e}"))?;
    n.set_fqdn(true);
    Ok(lower(&n))
}

fn insert(map: &mut RrMap, r: Record) {
    let key = (lower(&r.name), u16::from(r.record_type()));
    let set = map.entry(key).or_default();
    if !set.iter().any(|x| x.data == r.data) {
        set.push(r);
    }
}

/// A zone's key in [`ServiceView::zone_records`]: lowercase, no final dot.
pub fn zone_key(origin: &Name) -> String {
    origin.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Zone-file text (relative to `origin`) as record sets; SOA records are skipped.
fn parse_records(origin: &Name, text: &str) -> Result<RrMap, String> {
    let mut out = RrMap::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    let text = format!("$TTL 3600\n{text}\n");
    let parser = hickory_proto::serialize::txt::Parser::new(text, None, Some(origin.clone()));
    let (_, sets) = parser.parse().map_err(|e| format!("records: {e}"))?;
    for set in sets.values() {
        for r in set.records_without_rrsigs() {
            if r.record_type() == RecordType::SOA {
                continue;
            }
            if !origin.zone_of(&r.name) {
                return Err(format!("record {} is outside the zone", r.name));
            }
            insert(&mut out, r.clone());
        }
    }
    Ok(out)
}

fn flatten(map: &RrMap) -> Vec<Record> {
    map.values().flatten().cloned().collect()
}

impl Zone {
    fn from_config(z: &ZoneConfig, keys: &BTreeMap<Name, Key>) -> Result<Zone, String> {
        let origin = parse_name(&z.origin, "origin")?;
        if z.ns.is_empty() {
            return Err(
                "ns is empty: name at least one name server (the first is the SOA MNAME)".into(),
            );
        }
        let ns: Vec<Name> =
            z.ns.iter()
                .map(|n| parse_name(n, "ns"))
                .collect::<Result<_, _>>()?;
        let admin = match &z.admin {
            Some(a) => parse_name(a, "admin")?,
            None => origin
                .prepend_label("hostmaster")
                .map_err(|e| e.to_string())?,
        };
        let mut statics = RrMap::new();
        for n in &ns {
            insert(
                &mut statics,
                Record::from_rdata(origin.clone(), z.soa_ttl, RData::NS(NS(n.clone()))),
            );
        }
        let mut text = z.records.join("\n");
        if let Some(path) = &z.file {
            let file = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read zone file {}: {e}", path.display()))?;
            text.push('\n');
            text.push_str(&file);
        }
        for r in flatten(&parse_records(&origin, &text)?) {
            insert(&mut statics, r);
        }
        let allow_transfer = z
            .allow_transfer
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("allow_transfer '{s}' is not an address or prefix"))
            })
            .collect::<Result<_, _>>()?;
        let key_ref = |k: &String| -> Result<Name, String> {
            let n = parse_name(k, "key")?;
            if keys.contains_key(&n) {
                Ok(n)
            } else {
                Err(format!("key '{k}' is not defined in [[dns.key]]"))
            }
        };
        let transfer_key = z.transfer_key.as_ref().map(key_ref).transpose()?;
        let update_keys = z
            .update_keys
            .iter()
            .map(key_ref)
            .collect::<Result<_, _>>()?;
        Ok(Zone {
            soa: SOA::new(
                ns[0].clone(),
                admin,
                1,
                z.refresh,
                z.retry,
                z.expire,
                z.minimum,
            ),
            origin,
            soa_ttl: z.soa_ttl,
            statics,
            operator: RrMap::new(),
            dynamic: RrMap::new(),
            history: VecDeque::new(),
            notify: z.notify.clone(),
            allow_transfer,
            transfer_key,
            update_keys,
        })
    }

    fn soa_record(&self, serial: u32) -> Record {
        let mut soa = self.soa.clone();
        soa.serial = serial;
        Record::from_rdata(self.origin.clone(), self.soa_ttl, RData::SOA(soa))
    }

    fn negative_soa(&self) -> Record {
        let mut r = self.soa_record(self.soa.serial);
        r.ttl = self.soa_ttl.min(self.soa.minimum);
        r
    }

    fn get(&self, name: &Name, rtype: RecordType) -> Option<&Vec<Record>> {
        let key = (name.clone(), u16::from(rtype));
        self.dynamic
            .get(&key)
            .or_else(|| self.operator.get(&key))
            .or_else(|| self.statics.get(&key))
            .filter(|v| !v.is_empty())
    }

    /// Every record but the SOA; of the same name and type, dynamic ones
    /// replace operators' ones, which replace configured ones.
    fn all(&self) -> Vec<Record> {
        let mut merged = self.statics.clone();
        for (k, v) in self.operator.iter().chain(&self.dynamic) {
            merged.insert(k.clone(), v.clone());
        }
        merged.retain(|_, v| !v.is_empty());
        flatten(&merged)
    }

    /// The record sets at `name` (dynamic replacing static), by type.
    fn at(&self, name: &Name) -> BTreeMap<u16, &Vec<Record>> {
        let mut out = BTreeMap::new();
        for map in [&self.statics, &self.operator, &self.dynamic] {
            for ((n, t), v) in map.range((name.clone(), 0)..=(name.clone(), u16::MAX)) {
                if n == name && !v.is_empty() {
                    out.insert(*t, v);
                }
            }
        }
        out
    }

    /// Whether `name` owns records or has descendants (an empty non-terminal).
    /// A published service owns its name even with no address to give.
    fn name_exists(&self, name: &Name) -> bool {
        name == &self.origin
            || self
                .statics
                .iter()
                .chain(&self.operator)
                .any(|((n, _), v)| !v.is_empty() && name.zone_of(n))
            || self.dynamic.keys().any(|(n, _)| name.zone_of(n))
    }

    /// Moves to a new serial if `change` altered the records; returns whether it did.
    fn commit(&mut self, before: Vec<Record>, floor: u32) -> bool {
        let after = self.all();
        let removed: Vec<Record> = before
            .iter()
            .filter(|r| !after.contains(r))
            .cloned()
            .collect();
        let added: Vec<Record> = after
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        if removed.is_empty() && added.is_empty() {
            return false;
        }
        let from = self.soa.serial;
        let to = from.saturating_add(1).max(floor);
        self.soa.serial = to;
        self.history.push_back(Change {
            from,
            to,
            removed,
            added,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        true
    }

    /// The changes from `serial` to now, if the history still holds them all.
    fn changes_since(&self, serial: u32) -> Option<Vec<&Change>> {
        let start = self.history.iter().position(|c| c.from == serial)?;
        let chain: Vec<&Change> = self.history.iter().skip(start).collect();
        let linked = chain.windows(2).all(|w| w[0].to == w[1].from);
        (linked && chain.last()?.to == self.soa.serial).then_some(chain)
    }
}

/// The records that answer one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// NOERROR (with answers, or NODATA) or NXDOMAIN.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA, for negative answers.
    pub authorities: Vec<Record>,
}

/// What a request's TSIG said.
enum Auth {
    None,
    Key(Name, TSigResponseContext),
}

impl Authority {
    /// Builds the zones of `cfg`. `serials` are the serials last used (from
    /// the serial file), by origin; every zone starts above its own.
    pub fn new(
        cfg: &DnsConfig,
        serials: &BTreeMap<String, u32>,
    ) -> Result<Authority, DnsConfigError> {
        let mut keys = BTreeMap::new();
        for k in &cfg.keys {
            let err = |message: String| DnsConfigError::Key {
                key: k.name.clone(),
                message,
            };
            if !k.algorithm.eq_ignore_ascii_case("hmac-sha256") {
                return Err(err(format!(
                    "algorithm '{}' is not supported (use hmac-sha256)",
                    k.algorithm
                )));
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim())
                .map_err(|e| err(format!("secret is not base64: {e}")))?;
            if secret.len() < 16 {
                return Err(err("secret is shorter than 16 bytes".into()));
            }
            let name = parse_name(&k.name, "key name").map_err(err)?;
            let signer = TSigner::new(secret, TsigAlgorithm::HmacSha256, name.clone(), FUDGE)
                .map_err(|e| err(e.to_string()))?;
            keys.insert(name, Key(signer));
        }
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
    /// cluster should replicate ([`ServiceView::zone_records`]).
    pub fn take_record_changes(&mut self) -> Vec<(String, Vec<String>)> {
        std::mem::take(&mut self.record_changes)
    }

    /// NOTIFYs owed since the last call.
    pub fn take_notifies(&mut self) -> Vec<NotifyJob> {
        std::mem::take(&mut self.notifies)
    }

    fn changed(&mut self, zone: usize) {
        self.generation += 1;
        let z = &self.zones[zone];
        let soa = z.soa_record(z.soa.serial);
        for t in &z.notify {
            self.notifies.push(NotifyJob {
                target: *t,
                zone: z.origin.to_ascii(),
                serial: z.soa.serial,
                soa: soa.clone(),
            });
        }
    }

    /// Replaces the dynamic service records with `view`'s. Zones whose records
    /// change move to a new serial (at least the view's version) and owe NOTIFYs.
    pub fn apply_view(&mut self, view: &ServiceView) -> bool {
        let floor = u32::try_from(view.version).unwrap_or(u32::MAX);
        let mut per_zone: Vec<RrMap> = vec![RrMap::new(); self.zones.len()];
        for s in &view.services {
            let Ok(name) = parse_name(&s.name, "service") else {
                continue;
            };
            // The most specific zone that contains the name.
            let Some(zi) = self
                .zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.origin.zone_of(&name))
                .max_by_key(|(_, z)| z.origin.num_labels())
                .map(|(i, _)| i)
            else {
                continue;
            };
            for a in &s.addresses {
                let rdata = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                insert(
                    &mut per_zone[zi],
                    Record::from_rdata(name.clone(), s.ttl, rdata),
                );
            }
            // A service without addresses still owns its name: NODATA, not NXDOMAIN.
            per_zone[zi]
                .entry((name.clone(), u16::from(RecordType::A)))
                .or_default();
        }
        let mut any = false;
        for (i, dynamic) in per_zone.into_iter().enumerate() {
            let key = zone_key(&self.zones[i].origin);
            let operator = match view.zone_records.get(&key) {
                None => RrMap::new(),
                Some(lines) => match parse_records(&self.zones[i].origin, &lines.join("\n")) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(zone = %key, "replicated operator records ignored: {e}");
                        self.zones[i].operator.clone()
                    }
                },
            };
            if self.zones[i].dynamic == dynamic && self.zones[i].operator == operator {
                continue;
            }
            let before = self.zones[i].all();
            self.zones[i].dynamic = dynamic;
            self.zones[i].operator = operator;
            let names_changed = self.zones[i].commit(before, floor);
            // An empty owner appearing or going changes no record but does change answers.
            self.generation += 1;
            if names_changed {
                self.changed(i);
                any = true;
            }
        }
        any
    }

    fn zone_for(&self, name: &Name) -> Option<usize> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.origin.zone_of(name))
            .max_by_key(|(_, z)| z.origin.num_labels())
            .map(|(i, _)| i)
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

    fn verify_tsig(
        &self,
        bytes: &[u8],
        req: &Message,
        now: u64,
    ) -> Result<Auth, TSigResponseContext> {
        let id = req.metadata.id;
        let Some(sig) = req.signature.as_deref() else {
            return Ok(Auth::None);
        };
        let name = lower(&sig.name);
        let Some(Key(signer)) = self.keys.get(&name) else {
            return Err(TSigResponseContext::unknown_key(id, now, sig.name.clone()));
        };
        match signer.verify_message_byte(bytes, None, true) {
            Ok((mac, _, range)) => {
                if !range.contains(&now) {
                    return Err(TSigResponseContext::new(
                        id,
                        now,
                        signer.clone(),
                        mac,
                        Some(TsigError::BadTime),
                    ));
                }
                Ok(Auth::Key(
                    name,
                    TSigResponseContext::new(id, now, signer.clone(), mac, None),
                ))
            }
            Err(_) => Err(TSigResponseContext::bad_signature(id, now, signer.clone())),
        }
    }

    /// The answer to `qname`/`qtype` (class IN), or `None` outside the served zones.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Lookup> {
        let qname = lower(qname);
        let zone = &self.zones[self.zone_for(&qname)?];
        let mut out = Lookup {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authorities: Vec::new(),
        };
        if qname == zone.origin && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            // RFC 8482: one RRset answers ANY; at the apex the SOA.
            out.answers.push(zone.soa_record(zone.soa.serial));
            return Some(out);
        }
        if qtype == RecordType::ANY {
            if let Some(set) = zone.at(&qname).values().next() {
                out.answers.extend(set.iter().cloned());
                return Some(out);
            }
        } else if let Some(set) = zone.get(&qname, qtype) {
            out.answers.extend(set.iter().cloned());
            return Some(out);
        } else if let Some(cname) = zone.get(&qname, RecordType::CNAME) {
            out.answers.extend(cname.iter().cloned());
            if let Some(RData::CNAME(target)) = cname.first().map(|r| &r.data) {
                if let Some(set) = zone.get(&lower(&target.0), qtype) {
                    out.answers.extend(set.iter().cloned());
                }
            }
            return Some(out);
        }
        if !zone.name_exists(&qname) {
            out.rcode = ResponseCode::NXDomain;
        }
        out.authorities.push(zone.negative_soa());
        Some(out)
    }

    fn answer(&self, q: &Query, resp: &mut Message) {
        let found = match q.query_class() {
            DNSClass::IN | DNSClass::ANY => self.lookup(q.name(), q.query_type()),
            _ => None,
        };
        let Some(found) = found else {
            resp.metadata.response_code = ResponseCode::Refused;
            return;
        };
        resp.metadata.authoritative = true;
        resp.metadata.response_code = found.rcode;
        let qname = lower(q.name());
        // Echo the question's case in the records it owns.
        resp.add_answers(found.answers.into_iter().map(|mut r| {
            if r.name == qname {
                r.name = q.name().clone();
            }
            r
        }));
        resp.add_authorities(found.authorities);
    }

    fn transfer(
        &self,
        req: &Message,
        resp: &mut Message,
        src: IpAddr,
        transport: Transport,
        key: Option<&Name>,
    ) {
        let q = &req.queries[0];
        let qname = lower(q.name());
        let Some(zi) = self.zones.iter().position(|z| z.origin == qname) else {
            resp.metadata.response_code = ResponseCode::NotAuth;
            return;
        };
        let zone = &self.zones[zi];
        let allowed = zone.allow_transfer.iter().any(|n| n.contains(&src))
            && zone.transfer_key.as_ref().is_none_or(|k| key == Some(k));
        if !allowed {
            tracing::info!(zone = %zone.origin, %src, signed = key.is_some(), "transfer refused");
            resp.metadata.response_code = ResponseCode::Refused;
            return;
        }
        resp.metadata.authoritative = true;
        let current = zone.soa_record(zone.soa.serial);
        if q.query_type() == RecordType::IXFR {
            let client = req.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            });
            let Some(client) = client else {
                resp.metadata.response_code = ResponseCode::FormErr;
                return;
            };
            if client >= zone.soa.serial || transport == Transport::Udp {
                // Up to date, or over UDP: the SOA alone (the client retries on TCP).
                resp.add_answer(current);
                return;
            }
            if let Some(chain) = zone.changes_since(client) {
                resp.add_answer(current.clone());
                for c in chain {
                    resp.add_answer(zone.soa_record(c.from));
                    resp.add_answers(c.removed.iter().cloned());
                    resp.add_answer(zone.soa_record(c.to));
                    resp.add_answers(c.added.iter().cloned());
                }
                resp.add_answer(current);
                return;
            }
            // Too old for the history: the whole zone, AXFR-style (RFC 1995 section 4).
        } else if transport == Transport::Udp {
            resp.metadata.response_code = ResponseCode::Refused;
            return;
        }
        resp.add_answer(current.clone());
        resp.add_answers(zone.all());
        resp.add_answer(current);
    }

    fn update(&mut self, req: &Message, key: Option<&Name>) -> ResponseCode {
        if req.queries.len() != 1 || req.queries[0].query_type() != RecordType::SOA {
            return ResponseCode::FormErr;
        }
        let origin = lower(req.queries[0].name());
        let Some(zi) = self.zones.iter().position(|z| z.origin == origin) else {
            return ResponseCode::NotAuth;
        };
        let zone = &self.zones[zi];
        if !key.is_some_and(|k| zone.update_keys.contains(k)) {
            tracing::info!(zone = %zone.origin, signed = key.is_some(), "update refused");
            return ResponseCode::Refused;
        }
        // Prerequisites (RFC 2136 section 3.2).
        for p in &req.answers {
            let name = lower(&p.name);
            if !zone.origin.zone_of(&name) {
                return ResponseCode::NotZone;
            }
            let sets = zone.at(&name);
            let t = p.record_type();
            let ok = match p.dns_class {
                DNSClass::ANY if t == RecordType::ANY => !sets.is_empty(),
                DNSClass::ANY => sets.contains_key(&u16::from(t)),
                DNSClass::NONE if t == RecordType::ANY => sets.is_empty(),
                DNSClass::NONE => !sets.contains_key(&u16::from(t)),
                _ => {
                    let want: Vec<&Record> = req
                        .answers
                        .iter()
                        .filter(|r| lower(&r.name) == name && r.record_type() == t)
                        .collect();
                    sets.get(&u16::from(t)).is_some_and(|have| {
                        have.len() == want.len()
                            && want.iter().all(|w| have.iter().any(|h| h.data == w.data))
                    })
                }
            };
            if !ok {
                return match (p.dns_class, t) {
                    (DNSClass::ANY, RecordType::ANY) => ResponseCode::NXDomain,
                    (DNSClass::NONE, RecordType::ANY) => ResponseCode::YXDomain,
                    (DNSClass::NONE, _) => ResponseCode::YXRRSet,
                    _ => ResponseCode::NXRRSet,
                };
            }
        }
        for u in &req.authorities {
            if !zone.origin.zone_of(&lower(&u.name)) {
                return ResponseCode::NotZone;
            }
            if !matches!(u.dns_class, DNSClass::IN | DNSClass::ANY | DNSClass::NONE) {
                return ResponseCode::FormErr;
            }
        }
        let zone = &mut self.zones[zi];
        let before = zone.all();
        for u in &req.authorities {
            let name = lower(&u.name);
            let t = u.record_type();
            // The SOA is hinan's, and the apex NS come from the configuration.
            if t == RecordType::SOA || (name == zone.origin && t == RecordType::NS) {
                continue;
            }
            match u.dns_class {
                DNSClass::IN => {
                    let mut r = u.clone();
                    r.name = name;
                    insert(&mut zone.operator, r);
                }
                DNSClass::ANY if t == RecordType::ANY => {
                    zone.operator.retain(|(n, _), _| *n != name);
                }
                DNSClass::ANY => {
                    zone.operator.remove(&(name, u16::from(t)));
                }
                _ => {
                    if let Some(set) = zone.operator.get_mut(&(name.clone(), u16::from(t))) {
                        set.retain(|r| r.data != u.data);
                        if set.is_empty() {
                            zone.operator.remove(&(name, u16::from(t)));
                        }
                    }
                }
            }
        }
        if zone.commit(before, 0) {
            tracing::info!(zone = %zone.origin, serial = zone.soa.serial, "dynamic update applied");
            self.record_changes.push((
                zone_key(&zone.origin),
                flatten(&zone.operator)
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            ));
            self.changed(zi);
        }
        ResponseCode::NoError
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
