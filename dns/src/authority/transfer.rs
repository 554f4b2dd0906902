//! Zone transfers: AXFR, and IXFR (RFC 1995) from the change history.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::zone::lower;
use super::{Authority, Transport};

impl Authority {
    pub(super) fn transfer(
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
}
