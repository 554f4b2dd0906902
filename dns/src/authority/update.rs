//! Dynamic updates (RFC 2136) of operators' records, signed with a zone's update key.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};

use super::zone::{flatten, insert, lower, zone_key};
use super::Authority;

impl Authority {
    pub(super) fn update(&mut self, req: &Message, key: Option<&Name>) -> ResponseCode {
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
