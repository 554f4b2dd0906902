//! Deterministic tests of the detector core: virtual time, seeded loss.

use super::*;
use DetectorEvent::{PathDown, PathUp, SiteDown, SiteUp};

const WAN: PathId = PathId::WAN;
const TUNNEL: PathId = PathId::TUNNEL;
const LOCAL: NodeId = 1;
const A: NodeId = 2;
const B: NodeId = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// xorshift64: enough randomness for loss and jitter, and reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// Drives a detector the way the shell will: wakes at every deadline, polls
/// after every heartbeat, and logs each event with the time it was returned.
struct Harness {
    det: Detector,
    now: Duration,
    log: Vec<(Duration, DetectorEvent)>,
    heartbeat_rounds: u64,
}

impl Harness {
    fn new(cfg: DetectorConfig) -> Self {
        Harness {
            det: Detector::new(cfg, LOCAL),
            now: Duration::ZERO,
            log: Vec::new(),
            heartbeat_rounds: 0,
        }
    }

    fn add_peer(&mut self, peer: NodeId, paths: &[PathId]) {
        self.det.add_peer(peer, paths, self.now);
    }

    fn step(&mut self, at: Duration) {
        self.now = at;
        if self.det.heartbeats_due(at) {
            self.heartbeat_rounds += 1;
        }
        for event in self.det.poll(at) {
            self.log.push((at, event));
        }
    }

    /// Wakes at every deadline up to `t`, then at `t`.
    fn run_until(&mut self, t: Duration) {
        while let Some(deadline) = self.det.next_deadline().filter(|&d| d <= t) {
            self.step(deadline.max(self.now));
        }
        self.step(t);
    }

    fn hear(&mut self, peer: NodeId, path: PathId, t: Duration) {
        self.run_until(t);
        self.det.on_heartbeat(peer, path, t);
        self.step(t);
    }

    /// A heartbeat every 20 ms on each of `paths`, from `from` up to but
    /// not including `to`.
    fn hear_every(&mut self, peer: NodeId, paths: &[PathId], from: Duration, to: Duration) {
        let mut t = from;
        while t < to {
            for &path in paths {
                self.hear(peer, path, t);
            }
            t += ms(20);
        }
    }

    /// Heartbeats every 20 ms from `from` until `event` is logged; its time.
    fn hear_until(
        &mut self,
        peer: NodeId,
        path: PathId,
        from: Duration,
        event: DetectorEvent,
    ) -> Duration {
        let mut t = from;
        loop {
            self.hear(peer, path, t);
            if let Some(&(at, _)) = self.log.iter().find(|&&(at, e)| at >= from && e == event) {
                return at;
            }
            t += ms(20);
            assert!(t < from + secs(600), "{event:?} never came");
        }
    }

    fn events_since(&self, from: Duration) -> Vec<(Duration, DetectorEvent)> {
        self.log
            .iter()
            .copied()
            .filter(|&(at, _)| at >= from)
            .collect()
    }

    fn count(&self, pred: impl Fn(&DetectorEvent) -> bool) -> usize {
        self.log.iter().filter(|(_, e)| pred(e)).count()
    }
}

#[test]
fn default_config_is_valid_and_detects_within_300ms() {
    let cfg = DetectorConfig::default();
    assert_eq!(cfg.validate(), Ok(()));
    assert_eq!(cfg.detection_time(), ms(240));
    assert!(cfg.detection_time() <= ms(300));
}

#[test]
fn invalid_configs_are_rejected_with_a_reason() {
    let one = DetectorConfig {
        multiplier: 1,
        ..DetectorConfig::default()
    };
    let err = one.validate().unwrap_err();
    assert_eq!(err, ConfigError::Multiplier(1));
    assert!(err.to_string().contains("between 2 and 255"));

    let zero = DetectorConfig {
        interval: Duration::ZERO,
        ..DetectorConfig::default()
    };
    assert_eq!(zero.validate(), Err(ConfigError::Interval(Duration::ZERO)));

    let mut inverted = DetectorConfig::default();
    inverted.damping.initial_hold = secs(60);
    assert!(matches!(
        inverted.validate(),
        Err(ConfigError::HoldOrder { .. })
    ));
}

#[test]
fn dead_path_is_detected_within_detection_time() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    h.hear_every(A, &[WAN], ms(0), ms(1000));
    let last = ms(980);
    assert_eq!(h.det.health(A), PeerHealth::Up);
    // The shell sleeps until the next deadline: the detection time after
    // the last heartbeat, unless heartbeats are due first.
    h.run_until(last + ms(1));
    assert_eq!(h.det.next_deadline(), Some(ms(1000)), "next heartbeats due");
    h.step(ms(1000));
    h.step(ms(1020));
    h.step(ms(1040));
    assert!(h.det.next_deadline().unwrap() <= last + ms(240));

    h.run_until(secs(2));
    let downs: Vec<_> = h.events_since(last + ms(1));
    assert_eq!(
        downs,
        vec![
            (last + ms(240), PathDown { peer: A, path: WAN }),
            (last + ms(240), SiteDown { peer: A }),
        ]
    );
    let cfg = DetectorConfig::default();
    assert!(downs[0].0 - last <= cfg.interval * (cfg.multiplier + 1));
    assert_eq!(h.det.health(A), PeerHealth::Down);
}

/// Ten simulated minutes, 3 peers x 2 paths, every heartbeat lost with
/// probability 10 % and delayed 1-10 ms, at the default config.
fn lossy_soak(cfg: DetectorConfig, duration: Duration, seed: u64) -> (Harness, u64, u64) {
    let interval = cfg.interval;
    let mut h = Harness::new(cfg);
    let mut rng = XorShift(seed);
    let peers = [A, B, 4];
    let mut arrivals = Vec::new();
    let (mut sent, mut lost) = (0u64, 0u64);
    for &peer in &peers {
        h.add_peer(peer, &[WAN, TUNNEL]);
        for path in [WAN, TUNNEL] {
            // Each sender has its own phase.
            let mut t = Duration::from_micros(rng.below(20_000));
            while t < duration {
                sent += 1;
                if rng.percent(10) {
                    lost += 1;
                } else {
                    let latency = Duration::from_micros(1_000 + rng.below(9_000));
                    arrivals.push((t + latency, peer, path));
                }
                t += interval;
            }
        }
    }
    arrivals.sort();
    for (at, peer, path) in arrivals {
        h.hear(peer, path, at);
    }
    h.run_until(duration);
    (h, sent, lost)
}

#[test]
fn no_false_down_with_ten_percent_loss_over_ten_minutes() {
    let (h, sent, lost) = lossy_soak(DetectorConfig::default(), secs(600), 0x5eed_0001);
    // The loss really happened: 10 % of 6 x 30 000 heartbeats.
    assert_eq!(sent, 6 * 30_000);
    let loss = lost as f64 / sent as f64;
    assert!((0.095..0.105).contains(&loss), "loss was {loss}");
    // One heartbeat round per interval, from 0 through 600 s inclusive.
    assert_eq!(h.heartbeat_rounds, 30_001);
    // Only first contact: a PathUp per path and a SiteUp per peer.
    assert_eq!(h.count(|e| matches!(e, PathDown { .. })), 0);
    assert_eq!(h.count(|e| matches!(e, SiteDown { .. })), 0);
    assert_eq!(h.count(|e| matches!(e, PathUp { .. })), 6);
    assert_eq!(h.count(|e| matches!(e, SiteUp { .. })), 3);
    for peer in [A, B, 4] {
        assert_eq!(h.det.health(peer), PeerHealth::Up);
    }
}

/// The soak above would catch a bad default: a 60 ms detection time trips
/// on the same loss within a simulated minute.
#[test]
fn ten_percent_loss_trips_a_short_detection_time() {
    let cfg = DetectorConfig {
        multiplier: 3,
        ..DetectorConfig::default()
    };
    let (h, _, _) = lossy_soak(cfg, secs(60), 0x5eed_0001);
    assert!(h.count(|e| matches!(e, PathDown { .. })) > 10);
}

#[test]
fn median_detection_of_a_dead_peer_is_under_300ms() {
    let mut rng = XorShift(0xdead_beef);
    let mut latencies = Vec::new();
    for _ in 0..201 {
        let mut h = Harness::new(DetectorConfig::default());
        h.add_peer(A, &[WAN, TUNNEL]);
        let death = ms(2000) + Duration::from_micros(rng.below(1_000_000));
        let mut arrivals = Vec::new();
        for path in [WAN, TUNNEL] {
            let mut t = Duration::from_micros(rng.below(20_000));
            while t < death {
                if !rng.percent(10) {
                    let latency = Duration::from_micros(1_000 + rng.below(9_000));
                    arrivals.push((t + latency, path));
                }
                t += ms(20);
            }
        }
        arrivals.sort();
        for (at, path) in arrivals {
            h.hear(A, path, at);
        }
        h.run_until(death + secs(1));
        let site_down: Vec<Duration> = h
            .log
            .iter()
            .filter(|(_, e)| *e == SiteDown { peer: A })
            .map(|&(at, _)| at)
            .collect();
        assert_eq!(site_down.len(), 1, "exactly one SiteDown per death");
        assert!(site_down[0] > death, "reported down before it died");
        latencies.push(site_down[0] - death);
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(median <= ms(300), "median detection {median:?}");
    // Detection time minus at most one interval, plus up to 10 ms latency.
    assert!(median >= ms(220), "median detection {median:?}");
    assert!(*latencies.last().unwrap() <= ms(250));
}

#[test]
fn one_path_lost_degrades_the_peer_without_site_down() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN, TUNNEL]);
    h.hear_every(A, &[WAN, TUNNEL], ms(0), secs(1));
    h.hear_every(A, &[WAN], secs(1), secs(3));
    assert_eq!(
        h.events_since(ms(1)),
        vec![(
            ms(980 + 240),
            PathDown {
                peer: A,
                path: TUNNEL
            }
        )]
    );
    assert_eq!(h.det.health(A), PeerHealth::Degraded { down: vec![TUNNEL] });
    assert_eq!(h.count(|e| matches!(e, SiteDown { .. })), 0);
}

#[test]
fn all_paths_lost_is_site_down() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN, TUNNEL]);
    h.hear_every(A, &[WAN, TUNNEL], ms(0), secs(1));
    h.hear_every(A, &[TUNNEL], secs(1), ms(1500));
    assert_eq!(h.det.health(A), PeerHealth::Degraded { down: vec![WAN] });
    h.run_until(secs(3));
    assert_eq!(
        h.events_since(ms(1)),
        vec![
            (ms(980 + 240), PathDown { peer: A, path: WAN }),
            (
                ms(1480 + 240),
                PathDown {
                    peer: A,
                    path: TUNNEL
                }
            ),
            (ms(1480 + 240), SiteDown { peer: A }),
        ]
    );
    assert_eq!(h.det.health(A), PeerHealth::Down);
}

#[test]
fn recovery_comes_after_the_hold_time() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    h.hear_every(A, &[WAN], ms(0), secs(1));
    h.run_until(secs(3));
    assert_eq!(h.det.health(A), PeerHealth::Down);
    // Heard again from 3 s; the first outage is held for 1 s.
    h.hear_every(A, &[WAN], secs(3), secs(5));
    assert_eq!(
        h.events_since(secs(3)),
        vec![
            (secs(4), PathUp { peer: A, path: WAN }),
            (secs(4), SiteUp { peer: A }),
        ]
    );
    assert_eq!(h.det.health(A), PeerHealth::Up);
}

#[test]
fn silence_during_the_hold_restarts_it() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    h.hear_every(A, &[WAN], ms(0), secs(1));
    h.run_until(secs(3));
    h.hear_every(A, &[WAN], secs(3), ms(3500));
    // 300 ms of silence, longer than the detection time: the run breaks.
    h.hear_every(A, &[WAN], ms(3800), secs(6));
    assert_eq!(
        h.events_since(secs(3)),
        vec![
            (ms(4800), PathUp { peer: A, path: WAN }),
            (ms(4800), SiteUp { peer: A }),
        ]
    );
}

#[test]
fn flapping_doubles_the_hold_and_stability_decays_it() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    let mut t = Duration::ZERO;
    let mut holds = Vec::new();
    // Up for `stable`, then 2 s of silence, then heard until it is up again.
    let stables = [10, 5, 5, 5, 5, 5, 5, 130];
    for stable in stables {
        h.hear_every(A, &[WAN], t, t + secs(stable));
        let resume = t + secs(stable) + secs(2);
        h.run_until(resume);
        assert_eq!(h.det.health(A), PeerHealth::Down);
        let up = h.hear_until(A, WAN, resume, PathUp { peer: A, path: WAN });
        holds.push((up - resume).as_secs());
        t = up;
    }
    // First outage 1 s; each flap within 60 s of recovering doubles it, up
    // to 32 s; 130 s of stability (two whole windows) halves it twice.
    assert_eq!(holds, vec![1, 2, 4, 8, 16, 32, 32, 8]);
    assert_eq!(h.count(|e| matches!(e, SiteDown { .. })), stables.len());
}

#[test]
fn remove_peer_stops_events() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    h.add_peer(B, &[WAN]);
    h.hear_every(A, &[WAN], ms(0), secs(1));
    h.hear_every(B, &[WAN], ms(0), secs(2));
    let before = h.log.len();
    // A went silent at 980 ms; its PathDown is queued by B's heartbeat but
    // not yet polled when A is removed.
    h.det.on_heartbeat(B, WAN, ms(1300));
    h.det.remove_peer(A);
    h.step(ms(1300));
    // B keeps going until 2 s then stops.
    h.run_until(secs(10));
    h.det.on_heartbeat(A, WAN, secs(10));
    h.run_until(secs(20));
    assert_eq!(
        h.log[before..].to_vec(),
        vec![
            (ms(1980 + 240), PathDown { peer: B, path: WAN }),
            (ms(1980 + 240), SiteDown { peer: B }),
        ]
    );
    assert_eq!(h.det.health(A), PeerHealth::Unknown);
    assert_eq!(h.det.paths().collect::<Vec<_>>(), vec![(B, WAN)]);
}

#[test]
fn never_heard_peer_stays_unknown_without_events() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN, TUNNEL]);
    h.run_until(secs(600));
    assert!(h.log.is_empty());
    assert_eq!(h.det.health(A), PeerHealth::Unknown);
    assert_eq!(h.heartbeat_rounds, 30_001, "we keep calling it");
}

#[test]
fn unheard_path_is_down_once_the_peer_is_up_and_not_held() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN, TUNNEL]);
    h.run_until(secs(5));
    h.hear_every(A, &[WAN], secs(5), secs(7));
    h.hear(A, TUNNEL, secs(7));
    assert_eq!(
        h.events_since(secs(5)),
        vec![
            (secs(5), PathUp { peer: A, path: WAN }),
            (secs(5), SiteUp { peer: A }),
            (
                ms(5240),
                PathDown {
                    peer: A,
                    path: TUNNEL
                }
            ),
            // Never up before, so no hold: up on the first heartbeat.
            (
                secs(7),
                PathUp {
                    peer: A,
                    path: TUNNEL
                }
            ),
        ]
    );
    assert_eq!(h.det.health(A), PeerHealth::Up);
}

#[test]
fn a_late_heartbeat_does_not_hide_the_outage() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN]);
    h.hear_every(A, &[WAN], ms(0), secs(1));
    // The shell stalls: no poll until a heartbeat arrives 4 s later.
    h.det.on_heartbeat(A, WAN, secs(5));
    assert_eq!(
        h.det.poll(secs(5)),
        vec![PathDown { peer: A, path: WAN }, SiteDown { peer: A }]
    );
    assert_eq!(h.det.health(A), PeerHealth::Down);
}

#[test]
fn changing_paths_of_a_peer_keeps_state_and_reports_loss_of_the_last_up_path() {
    let mut h = Harness::new(DetectorConfig::default());
    h.add_peer(A, &[WAN, TUNNEL]);
    h.hear_every(A, &[WAN], ms(0), secs(1));
    h.run_until(secs(1));
    assert_eq!(h.det.health(A), PeerHealth::Degraded { down: vec![TUNNEL] });
    // Dropping the tunnel keeps the WAN's state; dropping the WAN, the only
    // path up, takes the site down.
    h.det.add_peer(A, &[WAN], secs(1));
    assert_eq!(h.det.health(A), PeerHealth::Up);
    h.det.add_peer(A, &[TUNNEL], secs(1));
    assert_eq!(h.det.poll(secs(1)), vec![SiteDown { peer: A }]);
    assert_eq!(h.det.health(A), PeerHealth::Down);
}

#[test]
fn heartbeats_are_due_once_per_interval_without_bursts() {
    let mut det = Detector::new(DetectorConfig::default(), LOCAL);
    assert!(!det.heartbeats_due(ms(0)));
    assert_eq!(det.next_deadline(), None);
    det.add_peer(A, &[WAN], ms(0));
    det.add_peer(LOCAL, &[WAN], ms(0));
    assert_eq!(det.paths().collect::<Vec<_>>(), vec![(A, WAN)]);
    let due: Vec<u64> = (0..1000).filter(|&t| det.heartbeats_due(ms(t))).collect();
    assert_eq!(due, (0..1000).step_by(20).collect::<Vec<u64>>());
    // A 105 ms stall: one round now, the next an interval later.
    assert!(det.heartbeats_due(ms(1105)));
    assert!(!det.heartbeats_due(ms(1106)));
    assert!(!det.heartbeats_due(ms(1124)));
    assert!(det.heartbeats_due(ms(1125)));
    det.remove_peer(A);
    assert!(!det.heartbeats_due(secs(5)));
}

#[test]
fn heartbeat_repr_carries_our_identity_and_timers() {
    let det = Detector::new(DetectorConfig::default(), LOCAL);
    let repr = det.heartbeat(A, TUNNEL, 7);
    assert_eq!(
        repr,
        HeartbeatRepr {
            sender: LOCAL,
            receiver: A,
            path: TUNNEL,
            seq: 7,
            tx_interval_us: 20_000,
            multiplier: 12,
        }
    );
}
