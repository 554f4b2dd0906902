//! The serial file: each zone's last serial, so that a restart never goes back.

use std::collections::BTreeMap;
use std::path::Path;

use super::ServerError;

/// Reads the serial file: one `origin serial` per line.
pub fn read_serials(path: &Path) -> Result<BTreeMap<String, u32>, ServerError> {
    let err = |message: String| ServerError::SerialFile {
        path: path.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().map(str::parse::<u32>),
            parts.next(),
        ) {
            (None, ..) => continue,
            (Some(origin), Some(Ok(serial)), None) => {
                out.insert(origin.to_string(), serial);
            }
            _ => return Err(err(format!("line {}: expected 'origin serial'", n + 1))),
        }
    }
    Ok(out)
}

pub(super) fn write_serials(path: &Path, serials: &BTreeMap<String, u32>) -> std::io::Result<()> {
    let text: String = serials.iter().map(|(o, s)| format!("{o} {s}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
