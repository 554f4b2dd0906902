//! `hinan migrate`, `evacuate`, `failback`, `cancel` and `moves`: operator
//! commands that go through the replicated plan, and its progress bars.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use hinan_orchestrator::core::control::ProposeReply;
use hinan_orchestrator::core::moves::{self, Intent, Move, MovePhase};
use hinan_orchestrator::core::state::{ClusterState, Command};
use hinan_orchestrator::shell::control::{self, Request};

/// Options every planning command takes.
#[derive(Debug, Args)]
pub struct PlanOpts {
    /// Why, for the audit log (default: the command line).
    #[arg(long)]
    pub reason: Option<String>,
    /// Follow the moves' progress until every one has ended; exit 1 if any
    /// did not succeed.
    #[arg(long)]
    pub wait: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

fn fetch(socket: &Path) -> Result<ClusterState> {
    Ok(control::call_as(
        socket,
        &Request::State,
        Duration::from_secs(10),
    )?)
}

/// Commits `intent`, prints the plan it became, and follows it with `--wait`.
pub fn plan(socket: &Path, intent: Intent, default_reason: String, opts: &PlanOpts) -> Result<()> {
    let reason = opts.reason.clone().unwrap_or(default_reason);
    let reply: ProposeReply = control::call_as(
        socket,
        &Request::Propose {
            command: Command::PlanMoves { intent, reason },
            timeout_ms: None,
        },
        Duration::from_secs(10),
    )?;
    let state = wait_applied(socket, reply.index)?;
    let Some(plan) = state.plans.values().find(|p| p.planned_at == reply.index) else {
        bail!("committed at index {} but no plan was stored", reply.index);
    };
    if opts.json {
        let moves: Vec<&Move> = plan
            .moves
            .iter()
            .filter_map(|m| state.moves.get(m))
            .collect();
        let out = serde_json::json!({ "plan": plan, "moves": moves });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "plan {} ({}), committed at index {}",
            plan.id, plan.reason, reply.index
        );
        for id in &plan.moves {
            if let Some(m) = state.moves.get(id) {
                println!(
                    "  {}  {}  {}/{} → {}/{}",
                    m.id, m.vm, m.from_site, m.from_host, m.to_site, m.to_host
                );
            }
        }
        for u in &plan.unplaced {
            println!("  not moved: {u}");
        }
    }
    if opts.wait {
        let id = plan.id.clone();
        return follow(socket, Some(&id), opts.json);
    }
    Ok(())
}

/// The state once index `index` is applied on this appliance.
fn wait_applied(socket: &Path, index: u64) -> Result<ClusterState> {
    for _ in 0..100 {
        let s = fetch(socket)?;
        if s.applied >= index {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("index {index} was committed but is not applied here after 5 s")
}

/// `hinan cancel ID`: a move, or every unfinished move of a plan.
pub fn cancel(socket: &Path, id: &str, wait: bool) -> Result<()> {
    let reply: ProposeReply = control::call_as(
        socket,
        &Request::Propose {
            command: Command::CancelMove { id: id.to_string() },
            timeout_ms: None,
        },
        Duration::from_secs(10),
    )?;
    let state = wait_applied(socket, reply.index)?;
    if let Some(a) = state.audit.iter().rev().find(|a| a.index == reply.index) {
        println!("{}", a.what);
    }
    if wait {
        let plan = state
            .moves
            .get(id)
            .map(|m| m.plan.clone())
            .unwrap_or_else(|| id.to_string());
        // Cancelled moves end as cancelled: that is what was asked.
        let _ = follow(socket, Some(&plan), false);
    }
    Ok(())
}

/// `hinan moves`: the unfinished moves (all kept with `--all`), with
/// progress bars; `--watch` redraws until none is left.
pub fn moves(socket: &Path, all: bool, watch: bool, json: bool) -> Result<()> {
    if watch {
        return follow(socket, None, json);
    }
    let state = fetch(socket)?;
    let list: Vec<&Move> = moves::ordered(&state)
        .into_iter()
        .filter(|m| all || m.phase.is_active())
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "no moves{}",
            if all {
                ""
            } else {
                " in progress (--all shows the finished)"
            }
        );
    }
    for m in list {
        println!("{}", line(m));
    }
    Ok(())
}

/// One move as a line with a progress bar.
pub fn line(m: &Move) -> String {
    let head = format!(
        "{:<5} {:<8} {}/{} → {}/{}",
        m.id, m.vm, m.from_site, m.from_host, m.to_site, m.to_host
    );
    let tail = match m.phase {
        MovePhase::Running => {
            let p = m.progress.clone().unwrap_or_default();
            let pct = if m.progress.is_some() { p.percent() } else { 0 };
            let filled = (pct as usize * 20) / 100;
            format!(
                "running  [{}{}] {:>3}%  {:.1} of {:.1} MiB left, {:.1} MiB sent  {:.1} MiB/s{}{}",
                "#".repeat(filled),
                "-".repeat(20 - filled),
                pct,
                mib(p.data_remaining),
                mib(p.data_total),
                mib(p.data_processed),
                mib(p.mem_bps),
                m.bandwidth_mib_s
                    .map(|b| format!(" (cap {b})"))
                    .unwrap_or_default(),
                if m.cancel_requested {
                    "  cancelling"
                } else {
                    ""
                }
            )
        }
        MovePhase::Pending => "pending".to_string(),
        phase => format!("{phase}: {}", m.outcome),
    };
    format!("{head}  {tail}")
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Redraws the moves of `plan` (or every active move) every 500 ms until
/// all have ended. Errs if any of the plan's moves did not succeed.
fn follow(socket: &Path, plan: Option<&str>, json: bool) -> Result<()> {
    let tty = std::io::stdout().is_terminal() && !json;
    let mut drawn = 0usize;
    let mut last = String::new();
    loop {
        let state = fetch(socket)?;
        let list: Vec<&Move> = moves::ordered(&state)
            .into_iter()
            .filter(|m| match plan {
                Some(p) => m.plan == p,
                None => m.phase.is_active(),
            })
            .collect();
        let text: Vec<String> = list.iter().map(|m| line(m)).collect();
        let joined = text.join("\n");
        if joined != last {
            if tty && drawn > 0 {
                print!("\x1b[{drawn}A\x1b[J");
            }
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!("{joined}");
            }
            drawn = text.len();
            last = joined;
        }
        if list.iter().all(|m| !m.phase.is_active()) {
            let bad: Vec<&&Move> = list.iter().filter(|m| m.phase != MovePhase::Done).collect();
            // A re-planned failure counts as the re-plan's outcome.
            let unresolved = bad.iter().filter(|m| {
                !(m.phase == MovePhase::Failed
                    && list.iter().any(|o| {
                        o.vm == m.vm && o.planned_at >= m.planned_at && o.phase == MovePhase::Done
                    }))
            });
            let n = unresolved.count();
            if n > 0 {
                bail!("{n} move(s) did not succeed");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
