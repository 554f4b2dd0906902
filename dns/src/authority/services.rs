//! The dynamic service records: a [`ServiceView`] replaces them, zone by zone.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::zone::{insert, parse_name, parse_records, zone_key, RrMap};
use super::Authority;
use crate::view::ServiceView;

impl Authority {
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
}
