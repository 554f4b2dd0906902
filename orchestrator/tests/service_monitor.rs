//! The monitor core driven by the real checks: a VM (an HTTP server on
//! 127.0.0.1) that starts answering 503 is declared failed after exactly N
//! failed service checks, and recovered once it answers 200 again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hinan_orchestrator::core::monitor::{
    CheckKind, FailureReason, Monitor, MonitorConfig, MonitorEvent, ServiceCheck, VmTarget,
    Watchers,
};
use hinan_orchestrator::shell::checks::run_check;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant};

/// An HTTP server that answers every request with the current `status` and
/// counts the 503s it sent.
struct FakeLms {
    port: u16,
    status: Arc<AtomicU16>,
    served_503: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

async fn start_lms() -> FakeLms {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let status = Arc::new(AtomicU16::new(200));
    let served_503 = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (s, s503, all) = (status.clone(), served_503.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let (s, s503, all) = (s.clone(), s503.clone(), all.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let code = s.load(Ordering::SeqCst);
                if code == 503 {
                    s503.fetch_add(1, Ordering::SeqCst);
                }
                all.fetch_add(1, Ordering::SeqCst);
                let response = format!("HTTP/1.0 {code} Status\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    FakeLms {
        port,
        status,
        served_503,
        served,
    }
}

/// Runs the checks the monitor asks for, one at a time, until `done` holds
/// for the events so far or `limit` passes.
async fn drive(
    monitor: &mut Monitor,
    origin: Instant,
    limit: Duration,
    done: impl Fn(&[MonitorEvent]) -> bool,
) -> Vec<MonitorEvent> {
    let give_up = Instant::now() + limit;
    let mut events = Vec::new();
    while !done(&events) && Instant::now() < give_up {
        for request in monitor.due(origin.elapsed()) {
            let outcome = run_check(&request.target, request.kind, request.timeout).await;
            let ok = outcome.is_ok();
            events.extend(monitor.on_result(&request.vm, request.kind, ok, origin.elapsed()));
        }
        if let Some(deadline) = monitor.next_deadline() {
            sleep_until((origin + deadline).min(give_up)).await;
        }
    }
    events
}

#[tokio::test]
async fn monitor_declares_a_real_http_outage_after_n_checks_and_sees_it_recover() {
    let lms = start_lms().await;
    let config = MonitorConfig {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(300),
        failures_to_declare: 3,
        successes_to_recover: 1,
    };
    let target = VmTarget {
        addr: Ipv4Addr::LOCALHOST,
        service: ServiceCheck::Http {
            port: lms.port,
            path: "/login/index.php".into(),
            expect_status: 200,
        },
        config,
    };
    let mut monitor = Monitor::new(1);
    monitor.set_live(BTreeSet::from([1, 2]));
    monitor.set_assignments(BTreeMap::from([(
        "lms1".to_string(),
        (Watchers { p1: 1, p2: Some(2) }, target),
    )]));
    let origin = Instant::now();

    let healthy = drive(&mut monitor, origin, Duration::from_millis(300), |_| false).await;
    assert_eq!(healthy, [], "a healthy VM raises nothing");
    assert!(lms.served.load(Ordering::SeqCst) >= 5, "checks ran");

    lms.status.store(503, Ordering::SeqCst);
    let outage = drive(&mut monitor, origin, Duration::from_secs(5), |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(
        outage,
        [MonitorEvent::VmFailed {
            vm: "lms1".into(),
            by: 1,
            reason: FailureReason {
                kind: CheckKind::Service,
                consecutive_failures: 3
            }
        }]
    );
    assert_eq!(
        lms.served_503.load(Ordering::SeqCst),
        3,
        "declared on the 3rd 503"
    );

    lms.status.store(200, Ordering::SeqCst);
    let recovery = drive(&mut monitor, origin, Duration::from_secs(5), |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(
        recovery,
        [MonitorEvent::VmRecovered {
            vm: "lms1".into(),
            by: 1
        }]
    );
    assert!(!monitor.is_failed("lms1"));
}
