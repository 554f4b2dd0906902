//! The failover benchmark of keepalived (`hinan-bench keepalived`): how long
//! B takes to hold the virtual address after A fails, for each VRRP setting
//! and way of failing. The daemons, their configuration and settings are in
//! [`crate::peers::keepalived`].
//!
//! # Measurement
//!
//! Takeover time runs from the failure instant to the instant the kernel
//! announces, on rtnetlink in B's namespace, that B's `wan0` has the VIP
//! ([`crate::lab::rtnl::RtnlWatch`]: a thread blocked in `recv` stamps each
//! notification; resolution well under 1 ms, plus scheduling delay on a busy
//! machine). The failure instant is taken right before the signal for
//! `kill -9` and `SIGSTOP`, and for a cut link from the same rtnetlink
//! stream in the WAN namespace (the instant the WAN's end of A's link went
//! down), so both ends of the interval come through the same path.
//!
//! Between trials A takes the VIP back (it preempts), B releases it, then the
//! bench waits one advert interval plus a random fraction of one, so that
//! failures land at uniformly random points of the advert cycle.
//!
//! # Failures
//!
//! See [`Failure`]. The main silent-failure number is [`Failure::LinkCut`]:
//! A's site drops off the WAN, as in a power cut or a lost uplink, and the
//! failure instant is the kernel's own report of it. [`Failure::SigStop`] and
//! [`Failure::Partition`] cross-check it. [`Failure::Kill9`] is the
//! flattering case: A's VRRP child says goodbye with a priority-0 advert, and
//! B takes over after only its skew time.
//!
//! # Why dropping A's adverts once seemed not to work
//!
//! The lab notes record that dropping A's adverts "with an nftables output
//! rule" did not make B take over within 3 minutes. What the bench shows:
//!
//! * A rule in A's own output hook works. keepalived 2.2.7 does see the
//!   failure (`sendmsg` returns EPERM), but only logs it ("Cant send advert
//!   to 198.18.1.2 (Operation not permitted)", `vrrp_send_adv` in vrrp.c) and
//!   stays MASTER. B hears nothing and takes over after its
//!   Master_Down_Interval, like after a cut link ([`Failure::OutputDrop`]).
//! * But A never steps down: B's adverts still reach A, and with priority
//!   100 against A's 150 they only make A log "forcing new election" and send
//!   one more advert, which the rule drops too. Both hold the VIP for as long
//!   as the rule stays. Looking at A (its VIP, its log), one sees no
//!   takeover at all.
//! * A rule that never sees the adverts gives exactly the recorded symptom.
//!   In the WAN router's output hook ([`Failure::WanOutputDrop`]) it matches
//!   nothing (its counter stays at 0): the router *forwards* the adverts, and
//!   forwarded packets pass prerouting, forward and postrouting, never
//!   output, which the lab's impairments avoid by using the forward hook.
//!   The same happens with a rule in A's forward hook, or in a chain named
//!   `output` that was created without a `type filter hook output` clause
//!   (a regular chain nothing jumps to): both checked by hand, counters at 0.
//!
//! So the quick try either had a rule that dropped nothing, or judged the
//! takeover from A's side; which one, its notes do not say. A counter on the
//! drop rule tells the first case apart, and every drop-rule trial here
//! records it ([`Trial::drop_rule_packets`]).

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bench::stats::{median, percentile};
use crate::lab::rtnl::{RtnlEvent, RtnlWatch};
use crate::lab::sys;
use crate::lab::wan::{self, LinkImpairment, WanState};
use crate::lab::{Campus, Lab};
use crate::peers::keepalived::{holds_vip, Keepalived, Role, Settings, BACKUP_PRIORITY, VIP};

/// How the master fails. Written in JSON by its [`Failure::name`], as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `kill -9` of A's keepalived parent, as the lab notes did it. Not
    /// silent: A's VRRP child gets SIGTERM as its parent-death signal and
    /// sends a priority-0 advert, on which B takes over after only its skew
    /// time. A crashed daemon on a live host looks like this; a lost site
    /// does not. (Killing the VRRP child itself with SIGKILL would be silent.)
    Kill9,
    /// The WAN's end of A's link goes down (the lab's `LinkImpairment {
    /// down: true }`): nothing from A reaches anyone, as when a site loses
    /// power or its uplink. The main silent-failure number.
    LinkCut,
    /// A's keepalived is frozen with SIGSTOP: it sends nothing more and
    /// says nothing. A cross-check of [`Failure::LinkCut`] with an exact
    /// failure instant.
    SigStop,
    /// The WAN drops everything between A and B in its forward hook (the
    /// lab's partition). The failure instant is only known to lie within
    /// the `nft` call that loads the rule, so trials record the start of
    /// that call: an upper bound.
    Partition,
    /// The lab notes' experiment done right: an nftables rule in A's own
    /// *output* hook drops A's VRRP packets (keepalived's `sendmsg` then
    /// fails with EPERM, which it only logs). Same upper-bound instant as
    /// [`Failure::Partition`].
    OutputDrop,
    /// The same rule in the *WAN router's* output hook, where the lab's
    /// other impairments live. It never matches: packets the router forwards
    /// pass prerouting, forward and postrouting, never output, which only
    /// sees packets the router itself originates. B keeps hearing A and
    /// never takes over; every trial times out. Kept to show that.
    WanOutputDrop,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Kill9,
        Failure::LinkCut,
        Failure::SigStop,
        Failure::Partition,
        Failure::OutputDrop,
        Failure::WanOutputDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Kill9 => "kill9",
            Failure::LinkCut => "link-cut",
            Failure::SigStop => "sigstop",
            Failure::Partition => "partition",
            Failure::OutputDrop => "output-drop",
            Failure::WanOutputDrop => "wan-output-drop",
        }
    }

    /// Whether the master fails without telling the backup.
    pub fn silent(self) -> bool {
        self != Failure::Kill9
    }
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Failure {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Failure> {
        Failure::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .with_context(|| {
                format!(
                    "unknown failure '{s}' (known: {})",
                    Failure::ALL.map(Failure::name).join(", ")
                )
            })
    }
}

/// One failover.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub trial: usize,
    /// From the failure instant to B holding the VIP; `None` on timeout.
    pub takeover_ms: Option<f64>,
    /// How long injecting the failure took (the uncertainty of the failure
    /// instant for `partition` and `output-drop`; informative for the others).
    pub inject_ms: f64,
    /// Whether B logged a priority-0 advert from A during the trial.
    pub priority0_seen: bool,
    /// Times B took the VIP while A was healthy, since the previous trial.
    pub spurious_takeovers: usize,
    /// Packets the nftables drop rule matched (output-drop failures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_rule_packets: Option<u64>,
    /// From undoing the failure to A holding the VIP and B not.
    pub restore_ms: f64,
}

/// A summary of takeover times, in ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub trials: usize,
    pub timeouts: usize,
    pub median_ms: Option<f64>,
    /// Nearest-rank 99th percentile: with fewer than 100 trials, the maximum.
    pub p99_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub spurious_takeovers: usize,
}

impl Summary {
    pub fn of(trials: &[Trial]) -> Summary {
        let ok: Vec<f64> = trials.iter().filter_map(|t| t.takeover_ms).collect();
        Summary {
            trials: trials.len(),
            timeouts: trials.len() - ok.len(),
            median_ms: median(&ok),
            p99_ms: percentile(&ok, 99.0),
            min_ms: ok.iter().copied().min_by(f64::total_cmp),
            max_ms: ok.iter().copied().max_by(f64::total_cmp),
            spurious_takeovers: trials.iter().map(|t| t.spurious_takeovers).sum(),
        }
    }
}

/// One settings × failure combination and its trials.
#[derive(Debug, Clone, Serialize)]
pub struct Combination {
    pub settings: Settings,
    pub failure: Failure,
    pub silent: bool,
    /// The backup's Master_Down_Interval from RFC 5798, for comparison.
    pub master_down_interval_ms: f64,
    pub takeover_limit_ms: f64,
    pub summary: Summary,
    pub trials: Vec<Trial>,
    /// Why the combination stopped before all its trials, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A small xorshift generator for the pause before each failure; seeded so a
/// run can be repeated.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A uniform fraction in [0, 1).
    pub fn next_fraction(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// keepalived at A (master) and B (backup), with rtnetlink watchers on B and on the WAN.
#[derive(Debug)]
pub struct VrrpPair {
    pub settings: Settings,
    pub master: Keepalived,
    pub backup: Keepalived,
    a: Campus,
    b: Campus,
    at_b: RtnlWatch,
    at_wan: RtnlWatch,
    backup_log_offset: u64,
}

impl VrrpPair {
    /// Starts both and waits until A is master and B backup.
    pub fn start(lab: &mut Lab, settings: Settings) -> Result<VrrpPair> {
        let a = lab.campus("a")?.clone();
        let b = lab.campus("b")?.clone();
        let at_b = RtnlWatch::start(&b.ns)?;
        let at_wan = RtnlWatch::start(&lab.topo.wan_ns)?;
        let master = Keepalived::start(lab, &a, Role::Master, &settings, b.public_ip)?;
        let backup = Keepalived::start(lab, &b, Role::Backup, &settings, a.public_ip)?;
        let mut pair = VrrpPair {
            settings,
            master,
            backup,
            a,
            b,
            at_b,
            at_wan,
            backup_log_offset: 0,
        };
        pair.wait_steady()?;
        // Whatever B did while the pair came up is not a spurious takeover.
        pair.at_b.drain();
        pair.backup_log_offset = fs::metadata(pair.backup.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(pair)
    }

    /// Waits until A holds the VIP and B does not; returns the time waited.
    pub fn wait_steady(&self) -> Result<Duration> {
        let start = Instant::now();
        sys::wait_for(
            "A to hold the VIP and B to release it",
            self.settings.settle_limit(),
            Duration::from_millis(5),
            || Ok((holds_vip(&self.a.ns)? && !holds_vip(&self.b.ns)?).then_some(())),
        )
        .with_context(|| {
            format!(
                "A's keepalived log:\n{}\nB's keepalived log:\n{}",
                self.master.log_tail(15),
                self.backup.log_tail(15)
            )
        })?;
        Ok(start.elapsed())
    }

    /// B's log since the previous call.
    fn backup_log_since_last(&mut self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.backup.log_path()) {
            if f.seek(SeekFrom::Start(self.backup_log_offset)).is_ok() {
                let _ = f.read_to_string(&mut text);
            }
        }
        self.backup_log_offset += text.len() as u64;
        text
    }

    /// Runs one trial: waits a random point of the advert cycle, fails A,
    /// times B's takeover, undoes the failure and waits until A is master again.
    pub fn trial(
        &mut self,
        lab: &mut Lab,
        failure: Failure,
        index: usize,
        jitter: &mut Jitter,
    ) -> Result<Trial> {
        let adv = self.settings.advert_int();
        std::thread::sleep(adv + adv.mul_f64(jitter.next_fraction()));
        let spurious_takeovers = self
            .at_b
            .drain()
            .iter()
            .filter(|(_, e)| is_vip_added(e))
            .count();
        self.backup_log_since_last();
        if holds_vip(&self.b.ns)? || !holds_vip(&self.a.ns)? {
            bail!("trial {index}: the pair is not in its steady state before the failure");
        }

        let (failed_at, inject) = self.inject(lab, failure)?;
        let limit = self.settings.takeover_limit();
        let seen = self
            .at_b
            .wait_for(limit.saturating_sub(failed_at.elapsed()), is_vip_added)?;
        let takeover_ms = seen.map(|(at, _)| ms(at.saturating_duration_since(failed_at)));
        let priority0_seen = self
            .backup_log_since_last()
            .contains("priority 0 advertisement");

        let restoring = Instant::now();
        let drop_rule_packets = self.restore(lab, failure)?;
        self.wait_steady()?;
        let restore_ms = ms(restoring.elapsed());
        // B releasing the VIP on the way back is expected, not a spurious takeover.
        self.at_b.drain();
        Ok(Trial {
            trial: index,
            takeover_ms,
            inject_ms: ms(inject),
            priority0_seen,
            spurious_takeovers,
            drop_rule_packets,
            restore_ms,
        })
    }

    /// Makes A fail; returns the failure instant and how long injecting took.
    fn inject(&mut self, lab: &mut Lab, failure: Failure) -> Result<(Instant, Duration)> {
        let start = Instant::now();
        let at = match failure {
            Failure::Kill9 => self.master.kill9(),
            Failure::SigStop => self.master.freeze(),
            Failure::LinkCut => {
                self.at_wan.drain();
                let mut cut = WanState::default();
                cut.set_link(
                    &self.a.name,
                    LinkImpairment {
                        down: true,
                        ..Default::default()
                    },
                );
                wan::apply(lab, &cut)?;
                let to_a = format!("to-{}", self.a.name);
                let (at, _) = self
                    .at_wan
                    .wait_for(
                        Duration::from_secs(1),
                        |e| matches!(e, RtnlEvent::Link { name, up: false, .. } if *name == to_a),
                    )?
                    .context("the WAN never reported A's link going down")?;
                at
            }
            Failure::Partition => {
                let mut cut = WanState::default();
                cut.partition(&self.a.name, &self.b.name, true);
                wan::apply(lab, &cut)?;
                start
            }
            Failure::OutputDrop | Failure::WanOutputDrop => {
                let ns = self.drop_rule_ns(lab, failure);
                sys::run_with_input(
                    "ip",
                    &["netns", "exec", &ns, "nft", "-f", "-"],
                    Some(OUTPUT_DROP_RULES),
                )
                .with_context(|| format!("loading the output-drop rule in {ns}"))?;
                start
            }
        };
        Ok((at, start.elapsed()))
    }

    /// Undoes `failure`: A comes back and, having the higher priority, takes
    /// the VIP back. Returns how many packets a drop rule matched, if one was used.
    fn restore(&mut self, lab: &mut Lab, failure: Failure) -> Result<Option<u64>> {
        let mut hits = None;
        match failure {
            Failure::Kill9 => {
                self.master.wait_gone(Duration::from_secs(10))?;
                self.master.stop();
                let a = self.a.clone();
                self.master =
                    Keepalived::start(lab, &a, Role::Master, &self.settings, self.b.public_ip)?;
            }
            Failure::SigStop => self.master.thaw(),
            Failure::LinkCut | Failure::Partition => wan::apply(lab, &WanState::default())?,
            Failure::OutputDrop | Failure::WanOutputDrop => {
                let ns = self.drop_rule_ns(lab, failure);
                let nft = |args: &[&str]| {
                    let mut all = vec!["netns", "exec", ns.as_str(), "nft"];
                    all.extend_from_slice(args);
                    sys::run("ip", &all)
                };
                let listing = nft(&["list", "table", "inet", OUTPUT_DROP_TABLE])?;
                hits = counter_packets(&listing);
                nft(&["delete", "table", "inet", OUTPUT_DROP_TABLE])?;
            }
        }
        Ok(hits)
    }

    /// Where the output-drop rule goes: A's namespace, or the WAN router's.
    fn drop_rule_ns(&self, lab: &Lab, failure: Failure) -> String {
        if failure == Failure::WanOutputDrop {
            lab.topo.wan_ns.clone()
        } else {
            self.a.ns.clone()
        }
    }
}

const OUTPUT_DROP_TABLE: &str = "hinan_bench_output_drop";
const OUTPUT_DROP_RULES: &str = "table inet hinan_bench_output_drop {
  chain output {
    type filter hook output priority 0; policy accept;
    ip protocol vrrp counter drop
  }
}
";

/// The packet count of the first `counter` in `nft list` output.
pub fn counter_packets(nft_listing: &str) -> Option<u64> {
    let mut words = nft_listing.split_whitespace();
    while let Some(w) = words.next() {
        if w == "counter" && words.next() == Some("packets") {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn is_vip_added(e: &RtnlEvent) -> bool {
    matches!(e, RtnlEvent::Addr { added: true, addr, .. } if *addr == VIP)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `trials` failovers of one combination on a fresh pair; calls
/// `progress` after each. Stops early, keeping the trials so far and saying
/// why in [`Combination::error`], when a trial fails or `interrupted` says so.
pub fn run_combination(
    lab: &mut Lab,
    settings: Settings,
    failure: Failure,
    trials: usize,
    jitter: &mut Jitter,
    mut progress: impl FnMut(&Trial),
    interrupted: &dyn Fn() -> bool,
) -> Result<Combination> {
    let mut pair = VrrpPair::start(lab, settings)?;
    let mut done = Vec::new();
    let mut error = None;
    for i in 1..=trials {
        if interrupted() {
            error = Some("interrupted".to_string());
            break;
        }
        match pair.trial(lab, failure, i, jitter) {
            Ok(t) => {
                progress(&t);
                done.push(t);
            }
            Err(e) => {
                error = Some(format!("trial {i}: {e:#}"));
                break;
            }
        }
    }
    Ok(Combination {
        settings,
        failure,
        silent: failure.silent(),
        master_down_interval_ms: ms(settings.master_down_interval(BACKUP_PRIORITY)),
        takeover_limit_ms: ms(settings.takeover_limit()),
        summary: Summary::of(&done),
        trials: done,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_timeouts_apart() {
        let t = |takeover_ms| Trial {
            trial: 0,
            takeover_ms,
            inject_ms: 0.0,
            priority0_seen: false,
            spurious_takeovers: 1,
            drop_rule_packets: None,
            restore_ms: 0.0,
        };
        let s = Summary::of(&[t(Some(30.0)), t(None), t(Some(40.0))]);
        assert_eq!(s.trials, 3);
        assert_eq!(s.timeouts, 1);
        assert_eq!(s.median_ms, Some(35.0));
        assert_eq!(s.p99_ms, Some(40.0));
        assert_eq!(s.spurious_takeovers, 3);
    }

    #[test]
    fn reads_the_drop_rule_counter() {
        let listing = "table inet hinan_bench_output_drop {\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\tip protocol vrrp counter packets 8 bytes 320 drop\n\t}\n}\n";
        assert_eq!(counter_packets(listing), Some(8));
        assert_eq!(counter_packets("table inet t {\n}\n"), None);
        assert_eq!(counter_packets("counter packets"), None);
    }

    #[test]
    fn names_round_trip() {
        for f in Failure::ALL {
            assert_eq!(f.name().parse::<Failure>().unwrap(), f);
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.name())
            );
        }
        assert!("power-cut".parse::<Failure>().is_err());
        assert_eq!("fastest".parse::<Settings>().unwrap(), Settings::FASTEST);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        let mut j = Jitter::new(42);
        for _ in 0..1000 {
            let x = j.next_fraction();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
