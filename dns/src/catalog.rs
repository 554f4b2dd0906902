//! The authority as a hickory-server [`ZoneHandler`], one per zone, so that
//! hickory's [`Catalog`] routes requests to the same answers
//! ([`Authority::lookup`]) the UDP/TCP shell gives. The catalog answers
//! queries only: transfers (IXFR, which hickory lacks), NOTIFY and updates
//! go through [`Authority::handle`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, Record, RecordSet, RecordType, TSigResponseContext};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_proto::ProtoError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};

use crate::authority::Authority;

/// One served zone of a shared [`Authority`].
#[derive(Debug)]
pub struct CatalogZone {
    origin: LowerName,
    authority: Arc<Mutex<Authority>>,
}

/// A catalog holding every zone of `authority`.
pub fn catalog(authority: Arc<Mutex<Authority>>) -> Catalog {
    let origins = authority
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .serials()
        .into_keys()
        .collect::<Vec<_>>();
    let mut catalog = Catalog::new();
    for o in origins {
        let Ok(name) = Name::from_ascii(&o) else {
            continue;
        };
        let origin = LowerName::new(&name);
        let zone: Arc<dyn ZoneHandler> = Arc::new(CatalogZone {
            origin: origin.clone(),
            authority: authority.clone(),
        });
        catalog.upsert(origin, vec![zone]);
    }
    catalog
}

fn as_lookup(records: Vec<Record>, options: LookupOptions) -> AuthLookup {
    let mut sets: BTreeMap<(Name, u16), RecordSet> = BTreeMap::new();
    for r in records {
        let key = (r.name.clone(), u16::from(r.record_type()));
        sets.entry(key)
            .or_insert_with(|| RecordSet::with_ttl(r.name.clone(), r.record_type(), r.ttl))
            .insert(r, 0);
    }
    let sets: Vec<Arc<RecordSet>> = sets.into_values().map(Arc::new).collect();
    AuthLookup::answers(LookupRecords::many(options, sets), None)
}

#[async_trait::async_trait]
impl ZoneHandler for CatalogZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let found = self
            .authority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(&Name::from(name.clone()), rtype);
        let result = match found {
            None => Err(LookupError::from(ResponseCode::Refused)),
            Some(l) if l.rcode == ResponseCode::NXDomain => {
                Err(LookupError::from(ResponseCode::NXDomain))
            }
            Some(l) if l.answers.is_empty() => Err(LookupError::NameExists),
            Some(l) => Ok(as_lookup(l.answers, options)),
        };
        LookupControlFlow::Break(result)
    }

    async fn search(
        &self,
        request: &Request,
        options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(i) => i,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let (name, rtype) = (info.query.name().clone(), info.query.query_type());
        if matches!(rtype, RecordType::AXFR | RecordType::IXFR) {
            return (
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::Refused))),
                None,
            );
        }
        (self.lookup(&name, rtype, Some(&info), options).await, None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Continue(Ok(AuthLookup::default()))
    }
}

/// A response handler that keeps the encoded responses instead of sending them.
#[derive(Debug, Clone, Default)]
pub struct CapturedResponses(pub Arc<Mutex<Vec<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for CapturedResponses {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        let info = response.destructive_emit(&mut BinEncoder::new(&mut buf))?;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        Ok(info)
    }
}

/// The catalog needs a clock type; it uses only the current time here.
#[derive(Debug, Clone, Copy)]
struct SystemClock;

#[async_trait::async_trait]
impl Time for SystemClock {
    async fn delay_for(_duration: Duration) {}

    async fn timeout<F: 'static + std::future::Future + Send>(
        _duration: Duration,
        future: F,
    ) -> Result<F::Output, std::io::Error> {
        Ok(future.await)
    }
}

/// Passes one request (as if from `src` over UDP) through `catalog` and
/// returns the encoded responses, without sockets.
pub async fn ask(
    catalog: &Catalog,
    request: &[u8],
    src: SocketAddr,
) -> Result<Vec<Vec<u8>>, ProtoError> {
    let req = Request::from_bytes(request.to_vec(), src, Protocol::Udp)?;
    let out = CapturedResponses::default();
    catalog
        .handle_request::<_, SystemClock>(&req, out.clone())
        .await;
    let responses = std::mem::take(&mut *out.0.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(responses)
}
