//! Running the system tools the lab drives (`ip`, `ovs-vsctl`, `virsh`, `nft`…)
//! with errors that say which command failed and what it printed.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `program args…` and returns its standard output.
/// A non-zero exit becomes an error carrying the command line and its stderr.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Like [`run`], feeding `input` on standard input.
pub fn run_with_input<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    input: Option<&str>,
) -> Result<String> {
    let line = command_line(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        format!("cannot start `{line}` (is it installed? `make test` installs it)")
    })?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().context("stdin was not piped")?;
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the input of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`], returning standard output as bytes.
pub fn run_bytes<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Vec<u8>> {
    let line = command_line(program, args);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs `program args…` inside network namespace `ns` (through `ip netns exec`).
pub fn run_in<S: AsRef<OsStr>>(ns: &str, program: &str, args: &[S]) -> Result<String> {
    let mut all: Vec<&OsStr> = vec![OsStr::new("netns"), OsStr::new("exec"), OsStr::new(ns)];
    all.push(OsStr::new(program));
    all.extend(args.iter().map(AsRef::as_ref));
    run("ip", &all)
}

/// Runs `ip -n ns args…`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Polls `probe` every `step` until it returns `Ok(Some(v))` or `limit` passes.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    step: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= limit {
            match last_err {
                Some(e) => bail!("timed out after {limit:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {limit:?} waiting for {what}"),
            }
        }
        std::thread::sleep(step);
    }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}

/// The first line `program args…` prints on stdout and stderr (how daemons
/// tell their version), trimmed; `None` if it cannot run or prints nothing.
pub fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_string())
}

/// Finds one of the workspace's binaries: `$env` if set, the running
/// executable if it is `name`, else next to it (test binaries live in
/// `target/<profile>/deps`, the binaries one level up).
pub fn workspace_binary(name: &str, env: &str, package: &str) -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(std::path::PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == name) {
        return Ok(exe);
    }
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!("cannot find the {name} binary (build it with `cargo build -p {package}`, or set {env})")
}

/// Starts `program args…` inside namespace `ns` as a daemon of the lab: in a
/// session of its own (so it outlives the command that started it), output
/// appended to `log`. Returns its PID (`ip netns exec` execs the program).
pub fn spawn_daemon_in<S: AsRef<OsStr>>(
    ns: &str,
    program: &OsStr,
    args: &[S],
    log: &std::path::Path,
) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    Ok(child.id())
}
