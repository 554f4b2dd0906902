//! Queries: the records that answer one question, and the answer message.

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::zone::lower;
use super::Authority;

/// The records that answer one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// NOERROR (with answers, or NODATA) or NXDOMAIN.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA, for negative answers.
    pub authorities: Vec<Record>,
}

impl Authority {
    pub(super) fn zone_for(&self, name: &Name) -> Option<usize> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.origin.zone_of(name))
            .max_by_key(|(_, z)| z.origin.num_labels())
            .map(|(i, _)| i)
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

    pub(super) fn answer(&self, q: &Query, resp: &mut Message) {
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
}
