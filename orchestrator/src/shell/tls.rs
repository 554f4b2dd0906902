//! Mutual TLS between appliances with pinned keys.
//!
//! Each appliance has a self-signed certificate (`hinan keygen`). A peer is
//! trusted if and only if the SHA-256 of its certificate equals the pin in
//! this appliance's configuration: no CA, no names, no expiry games. Both sides
//! present and check certificates (TLS 1.3 only), and the server learns which
//! appliance connected from the pin that matched.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::core::state::NodeId;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("generating a key: {0}")]
    Keygen(String),
}

/// A 32-byte SHA-256 certificate pin.
pub type Pin = [u8; 32];

/// SHA-256 of a DER certificate.
pub fn pin_of(cert: &[u8]) -> Pin {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut pin = [0u8; 32];
    pin.copy_from_slice(d.as_ref());
    pin
}

pub fn pin_hex(pin: &Pin) -> String {
    pin.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn parse_pin(hex: &str) -> Option<Pin> {
    if hex.len() != 64 {
        return None;
    }
    let mut pin = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        pin[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(pin)
}

/// A fresh self-signed certificate: (certificate PEM, private key PEM, pin).
pub fn keygen(name: &str) -> Result<(String, String, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])
        .map_err(|e| TlsError::Keygen(e.to_string()))?;
    let pin = pin_hex(&pin_of(ck.cert.der()));
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem(), pin))
}

/// This appliance's identity: certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let pem_err = |what, path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
            what,
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_err("a certificate", cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("a certificate", cert, &e))?;
        if certs.is_empty() {
            return Err(pem_err("a certificate", cert, &"no CERTIFICATE block"));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err("a private key", key, &e))?;
        Ok(Identity { certs, key })
    }

    pub fn pin(&self) -> Pin {
        pin_of(&self.certs[0])
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one pinned certificate (the client's view of a server).
#[derive(Debug)]
struct PinnedServer {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if pin_of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "peer certificate {} does not match the pinned {}",
                pin_hex(&pin_of(end_entity)),
                pin_hex(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any of the peers' pinned certificates (the server's view of clients).
#[derive(Debug)]
struct PinnedClients {
    pins: BTreeMap<Pin, NodeId>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pins.contains_key(&pin_of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "client certificate {} is not pinned for any peer",
                pin_hex(&pin_of(end_entity))
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side: requires a client certificate pinned for one of `peers`.
pub fn server_config(
    id: &Identity,
    peers: &BTreeMap<Pin, NodeId>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = PinnedClients {
        pins: peers.clone(),
        provider: provider(),
    };
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// The client side toward one peer, whose certificate must match `pin`.
pub fn client_config(id: &Identity, pin: Pin) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = PinnedServer {
        pin,
        provider: provider(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Which peer a server-side connection belongs to, from its certificate.
pub fn peer_of(conn: &rustls::ServerConnection, peers: &BTreeMap<Pin, NodeId>) -> Option<NodeId> {
    let cert = conn.peer_certificates()?.first()?;
    peers.get(&pin_of(cert)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_through_hex() {
        let (_, _, hex) = keygen("hinan-a").unwrap();
        let pin = parse_pin(&hex).unwrap();
        assert_eq!(pin_hex(&pin), hex);
        assert!(parse_pin("zz").is_none());
        assert!(parse_pin(&"g".repeat(64)).is_none());
    }
}
