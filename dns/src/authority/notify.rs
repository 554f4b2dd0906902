//! NOTIFY (RFC 1996): the message owed to each secondary when a zone's serial
//! changes. Sending and retrying is the shell's job.

use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{Record, RecordType};

use super::zone::query;
use super::Authority;

/// A NOTIFY to send because a zone's serial changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyJob {
    pub target: SocketAddr,
    pub zone: String,
    pub serial: u32,
    pub(super) soa: Record,
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

impl Authority {
    /// Marks zone `zone` changed: cached answers are stale, and its secondaries are owed a NOTIFY.
    pub(super) fn changed(&mut self, zone: usize) {
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
}
