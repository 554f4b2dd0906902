//! TSIG (RFC 8945): the keys of the configuration and the check of a
//! request's signature.

use std::collections::BTreeMap;

use base64::Engine;
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::{Name, TSigResponseContext, TSigner};

use super::zone::{lower, parse_name};
use super::{Authority, DnsConfigError};
use crate::config::TsigKeyConfig;

/// TSIG time fudge (s).
const FUDGE: u16 = 300;

/// A TSIG key (the secret never appears in logs).
#[derive(Clone)]
pub(super) struct Key(TSigner);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.0.signer_name())
    }
}

/// What a request's TSIG said.
pub(super) enum Auth {
    None,
    Key(Name, TSigResponseContext),
}

/// The TSIG keys of the configuration, by (lowercase) name.
pub(super) fn keys(configured: &[TsigKeyConfig]) -> Result<BTreeMap<Name, Key>, DnsConfigError> {
    let mut keys = BTreeMap::new();
    for k in configured {
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
    Ok(keys)
}

impl Authority {
    pub(super) fn verify_tsig(
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
}
