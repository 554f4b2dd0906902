//! WAN impairments, set per link and per pair of links.
//!
//! The WAN namespace is a kernel router. Impairments act on packets it
//! forwards *toward* a link, the way netem on the WAN's side of that link would,
//! so on a link with 20 ms delay and 10 % loss a ping to that site sees its RTT
//! rise by 20 ms and about 10 % of its probes lost.
//!
//! * **loss**: an nftables rule with `numgen random` in the WAN's forward hook;
//! * **partition** between two links: nftables drops between their prefixes;
//! * **down**: the WAN's end of the link's veth goes down (a cut cable);
//! * **rate**: a `tbf` qdisc on the WAN's end of the link's veth caps what
//!   the WAN sends toward the link (netem is absent; tbf and htb work);
//! * **delay**: this kernel has no netem, so packets toward the link are routed
//!   (policy routing, by destination prefix) into a TUN device owned by a small
//!   relay process (`hinan-lab wan-delay`) that holds each packet for the delay
//!   and writes it back; packets coming back out of the TUN device are routed
//!   normally. Only delayed links take that detour.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::procs::ProcRecord;
use crate::lab::sys::{self, ip};
use crate::lab::Lab;

/// Impairments of one WAN link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkImpairment {
    /// One-way delay added to packets toward this link, in ms.
    pub delay_ms: u32,
    /// Share of packets toward this link that are dropped, in percent.
    pub loss_pct: f64,
    /// The link is cut.
    pub down: bool,
    /// Bandwidth toward this link, in Mbit/s; none is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<u32>,
}

/// Every impairment in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WanState {
    pub links: BTreeMap<String, LinkImpairment>,
    /// Pairs of links between which nothing crosses (each pair sorted).
    pub partitions: BTreeSet<(String, String)>,
}

impl WanState {
    pub fn load(run_dir: &Path) -> Result<WanState> {
        let text = fs::read_to_string(run_dir.join("wan.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self, run_dir: &Path) -> Result<()> {
        fs::write(run_dir.join("wan.json"), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Sets the impairments of `link`.
    pub fn set_link(&mut self, link: &str, imp: LinkImpairment) {
        if imp == LinkImpairment::default() {
            self.links.remove(link);
        } else {
            self.links.insert(link.to_string(), imp);
        }
    }

    /// Starts (`on`) or heals a partition between `x` and `y`.
    pub fn partition(&mut self, x: &str, y: &str, on: bool) {
        let pair = if x <= y {
            (x.to_string(), y.to_string())
        } else {
            (y.to_string(), x.to_string())
        };
        if on {
            self.partitions.insert(pair);
        } else {
            self.partitions.remove(&pair);
        }
    }

    pub fn describe(&self) -> String {
        if self.links.is_empty() && self.partitions.is_empty() {
            return "unimpaired".into();
        }
        let mut parts: Vec<String> = self
            .links
            .iter()
            .map(|(l, i)| {
                format!(
                    "link {l}: delay {} ms, loss {} %{}{}",
                    i.delay_ms,
                    i.loss_pct,
                    i.rate_mbit
                        .map(|r| format!(", rate {r} Mbit/s"))
                        .unwrap_or_default(),
                    if i.down { ", down" } else { "" }
                )
            })
            .collect();
        parts.extend(
            self.partitions
                .iter()
                .map(|(x, y)| format!("partition {x}|{y}")),
        );
        parts.join("; ")
    }
}

/// Makes the WAN match `want`. Idempotent: run it any number of times.
pub fn apply(lab: &mut Lab, want: &WanState) -> Result<()> {
    let topo = lab.topo.clone();
    for (link, imp) in &want.links {
        topo.link_prefixes(link)?;
        if imp.rate_mbit == Some(0) || imp.rate_mbit.is_some_and(|r| r > 100_000) {
            bail!("the rate on link {link} must be 1 to 100000 Mbit/s");
        }
        if !(0.0..=100.0).contains(&imp.loss_pct) {
            bail!(
                "loss on link {link} must be 0 to 100 %, not {}",
                imp.loss_pct
            );
        }
    }
    for (x, y) in &want.partitions {
        topo.link_prefixes(x)?;
        topo.link_prefixes(y)?;
        if x == y {
            bail!("a partition needs two different links, not {x} twice");
        }
    }
    let wan = topo.wan_ns.clone();
    sys::run_with_input(
        "ip",
        &["netns", "exec", &wan, "nft", "-f", "-"],
        Some(&ruleset(lab, want)?),
    )
    .context("loading the WAN's nftables rules")?;
    let had = lab.wan_state();
    for (index, link) in topo.link_names().iter().enumerate() {
        let imp = want.links.get(link).cloned().unwrap_or_default();
        ip(
            &wan,
            &[
                "link",
                "set",
                &format!("to-{link}"),
                if imp.down { "down" } else { "up" },
            ],
        )?;
        let had_rate = had.links.get(link).and_then(|i| i.rate_mbit);
        if had_rate != imp.rate_mbit {
            set_rate(&wan, link, imp.rate_mbit)?;
        }
        let before = had.links.get(link).map(|i| i.delay_ms).unwrap_or(0);
        let running = lab
            .run
            .manifest
            .processes
            .iter()
            .any(|p| p.role == delay_role(link) && p.alive());
        if before != imp.delay_ms || (imp.delay_ms > 0 && !running) {
            set_delay(lab, link, 100 + index as u32, imp.delay_ms)?;
        }
    }
    want.save(&lab.run.path)?;
    Ok(())
}

fn ruleset(lab: &Lab, want: &WanState) -> Result<String> {
    let topo = &lab.topo;
    let set = |link: &str| -> Result<String> {
        Ok(format!("{{ {} }}", topo.link_prefixes(link)?.join(", ")))
    };
    let mut rules = Vec::new();
    for (x, y) in &want.partitions {
        let (px, py) = (set(x)?, set(y)?);
        rules.push(format!("ip saddr {px} ip daddr {py} drop"));
        rules.push(format!("ip saddr {py} ip daddr {px} drop"));
    }
    for (link, imp) in &want.links {
        if imp.loss_pct > 0.0 {
            // Per ten thousand; packets re-entering from a delay relay were already judged.
            let n = (imp.loss_pct * 100.0).round() as u32;
            rules.push(format!(
                "iifname != \"dly-*\" ip daddr {} numgen random mod 10000 < {n} drop",
                set(link)?
            ));
        }
    }
    Ok(format!(
        "table inet hinan_wan {{}}\ndelete table inet hinan_wan\ntable inet hinan_wan {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    {}\n  }}\n}}\n",
        rules.join("\n    ")
    ))
}

/// Caps what the WAN sends toward `link` at `rate_mbit` (none: unlimited)
/// with a token bucket on the WAN's end of the link. The bucket holds 10 ms
/// of traffic, and at least one 64 KiB offloaded super-packet.
fn set_rate(wan: &str, link: &str, rate_mbit: Option<u32>) -> Result<()> {
    let dev = format!("to-{link}");
    let tc = |args: &[&str]| -> Result<()> {
        let mut all = vec!["netns", "exec", wan, "tc"];
        all.extend_from_slice(args);
        sys::run("ip", &all).map(drop)
    };
    let _ = tc(&["qdisc", "del", "dev", &dev, "root"]);
    let Some(rate) = rate_mbit else {
        return Ok(());
    };
    let burst = (u64::from(rate) * 1_000_000 / 8 / 100).max(64 * 1024 + 1514);
    tc(&[
        "qdisc",
        "replace",
        "dev",
        &dev,
        "root",
        "tbf",
        "rate",
        &format!("{rate}mbit"),
        "burst",
        &burst.to_string(),
        "latency",
        "100ms",
    ])
    .with_context(|| format!("limiting link {link} to {rate} Mbit/s"))
}

fn delay_role(link: &str) -> String {
    format!("wan/delay-{link}")
}

fn set_delay(lab: &mut Lab, link: &str, table: u32, delay_ms: u32) -> Result<()> {
    let wan = lab.topo.wan_ns.clone();
    let dev = format!("dly-{link}");
    let table = table.to_string();
    let prefixes = lab.topo.link_prefixes(link)?;
    for p in &prefixes {
        while ip(&wan, &["rule", "del", "to", p, "lookup", &table]).is_ok() {}
    }
    if let Some(old) = lab
        .run
        .manifest
        .processes
        .iter()
        .find(|p| p.role == delay_role(link))
        .cloned()
    {
        old.stop(Duration::from_secs(2));
    }
    if delay_ms == 0 {
        return Ok(());
    }
    let bin = lab_binary()?;
    let pid = sys::spawn_daemon_in(
        &wan,
        bin.as_os_str(),
        &[
            "wan-delay",
            "--dev",
            &dev,
            "--delay-ms",
            &delay_ms.to_string(),
        ],
        &lab.run.path.join(format!("wan-delay-{link}.log")),
    )?;
    let rec = ProcRecord::of(&delay_role(link), pid as i32)
        .context("the WAN delay relay exited at once")?;
    lab.record(rec)?;
    sys::wait_for(
        &format!("the delay relay's device {dev}"),
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(ip(&wan, &["link", "show", &dev]).ok().map(|_| ())),
    )?;
    ip(&wan, &["link", "set", &dev, "up"])?;
    ip(
        &wan,
        &["route", "replace", "default", "dev", &dev, "table", &table],
    )?;
    while ip(&wan, &["rule", "del", "iif", &dev, "lookup", "main"]).is_ok() {}
    ip(
        &wan,
        &["rule", "add", "iif", &dev, "lookup", "main", "pref", "100"],
    )?;
    for p in &prefixes {
        ip(
            &wan,
            &["rule", "add", "to", p, "lookup", &table, "pref", "200"],
        )?;
    }
    Ok(())
}

/// The `hinan-lab` binary, which also serves as the delay relay.
pub fn lab_binary() -> Result<PathBuf> {
    sys::workspace_binary("hinan-lab", "HINAN_LAB_BIN", "hinan-tests")
}

/// Ping statistics.
#[derive(Debug, Clone)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub rtts_ms: Vec<f64>,
}

impl PingStats {
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.sent - self.received) / f64::from(self.sent)
    }

    pub fn median_rtt_ms(&self) -> Option<f64> {
        let mut v = self.rtts_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// Pings `to` from namespace `ns`: `count` echo requests every `interval`.
pub fn ping(ns: &str, to: &str, count: u32, interval: Duration) -> Result<PingStats> {
    let interval = format!("{:.3}", interval.as_secs_f64());
    // ping exits 1 when replies are missing: read its output either way.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &interval,
            "-W",
            "1",
            to,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts_ms = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| {
            format!(
                "ping printed no summary: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let nums: Vec<u32> = summary
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    if nums.len() < 2 {
        bail!("cannot read ping's summary '{summary}'");
    }
    Ok(PingStats {
        sent: nums[0],
        received: nums[1],
        rtts_ms,
    })
}
