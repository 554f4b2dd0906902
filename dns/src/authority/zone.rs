//! Zones: their records (configured, operators', dynamic), SOA serial and
//! change history, and the name helpers every part of the authority uses.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::tsig::Key;
use super::HISTORY;
use crate::config::ZoneConfig;

pub(super) type RrMap = BTreeMap<(Name, u16), Vec<Record>>;

/// One change of a zone, for IXFR.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) from: u32,
    pub(super) to: u32,
    pub(super) removed: Vec<Record>,
    pub(super) added: Vec<Record>,
}

#[derive(Debug)]
pub(super) struct Zone {
    pub(super) origin: Name,
    pub(super) soa: SOA,
    pub(super) soa_ttl: u32,
    pub(super) statics: RrMap,
    /// Operators' records (RFC 2136 updates), replicated through the cluster.
    pub(super) operator: RrMap,
    pub(super) dynamic: RrMap,
    pub(super) history: VecDeque<Change>,
    pub(super) notify: Vec<SocketAddr>,
    pub(super) allow_transfer: Vec<IpNet>,
    pub(super) transfer_key: Option<Name>,
    pub(super) update_keys: Vec<Name>,
}

pub(super) fn query(name: Name, rtype: RecordType) -> Query {
    let mut q = Query::query(name, rtype);
    q.set_query_class(DNSClass::IN);
    q
}

pub(super) fn lower(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

pub(super) fn parse_name(s: &str, what: &str) -> Result<Name, String> {
    let mut n =
        Name::from_ascii(s).map_err(|e| format!("{what} '{s}' is not a domain name: {e}"))?;
    n.set_fqdn(true);
    Ok(lower(&n))
}

pub(super) fn insert(map: &mut RrMap, r: Record) {
    let key = (lower(&r.name), u16::from(r.record_type()));
    let set = map.entry(key).or_default();
    if !set.iter().any(|x| x.data == r.data) {
        set.push(r);
    }
}

/// A zone's key in [`ServiceView::zone_records`](crate::view::ServiceView::zone_records): lowercase, no final dot.
pub fn zone_key(origin: &Name) -> String {
    origin.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Zone-file text (relative to `origin`) as record sets; SOA records are skipped.
pub(super) fn parse_records(origin: &Name, text: &str) -> Result<RrMap, String> {
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

pub(super) fn flatten(map: &RrMap) -> Vec<Record> {
    map.values().flatten().cloned().collect()
}

impl Zone {
    pub(super) fn from_config(z: &ZoneConfig, keys: &BTreeMap<Name, Key>) -> Result<Zone, String> {
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

    pub(super) fn soa_record(&self, serial: u32) -> Record {
        let mut soa = self.soa.clone();
        soa.serial = serial;
        Record::from_rdata(self.origin.clone(), self.soa_ttl, RData::SOA(soa))
    }

    pub(super) fn negative_soa(&self) -> Record {
        let mut r = self.soa_record(self.soa.serial);
        r.ttl = self.soa_ttl.min(self.soa.minimum);
        r
    }

    pub(super) fn get(&self, name: &Name, rtype: RecordType) -> Option<&Vec<Record>> {
        let key = (name.clone(), u16::from(rtype));
        self.dynamic
            .get(&key)
            .or_else(|| self.operator.get(&key))
            .or_else(|| self.statics.get(&key))
            .filter(|v| !v.is_empty())
    }

    /// Every record but the SOA; of the same name and type, dynamic ones
    /// replace operators' ones, which replace configured ones.
    pub(super) fn all(&self) -> Vec<Record> {
        let mut merged = self.statics.clone();
        for (k, v) in self.operator.iter().chain(&self.dynamic) {
            merged.insert(k.clone(), v.clone());
        }
        merged.retain(|_, v| !v.is_empty());
        flatten(&merged)
    }

    /// The record sets at `name` (dynamic replacing static), by type.
    pub(super) fn at(&self, name: &Name) -> BTreeMap<u16, &Vec<Record>> {
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
    pub(super) fn name_exists(&self, name: &Name) -> bool {
        name == &self.origin
            || self
                .statics
                .iter()
                .chain(&self.operator)
                .any(|((n, _), v)| !v.is_empty() && name.zone_of(n))
            || self.dynamic.keys().any(|(n, _)| name.zone_of(n))
    }

    /// Moves to a new serial if `change` altered the records; returns whether it did.
    pub(super) fn commit(&mut self, before: Vec<Record>, floor: u32) -> bool {
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
    pub(super) fn changes_since(&self, serial: u32) -> Option<Vec<&Change>> {
        let start = self.history.iter().position(|c| c.from == serial)?;
        let chain: Vec<&Change> = self.history.iter().skip(start).collect();
        let linked = chain.windows(2).all(|w| w[0].to == w[1].from);
        (linked && chain.last()?.to == self.soa.serial).then_some(chain)
    }
}
