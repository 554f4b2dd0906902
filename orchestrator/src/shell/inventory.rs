//! The inventory file on disk: read with size limits, then parsed and checked
//! by the pure [`crate::core::inventory::parse`].

use std::path::Path;

use crate::core::inventory::{parse, Inventory, Refusal, Refused, MAX_DOMAIN_XML, MAX_INVENTORY};

/// Reads and checks the inventory at `path`; domain XML paths are relative to its folder.
pub fn load(path: &Path) -> Result<Inventory, Refused> {
    use std::io::Read;
    let file = path.display().to_string();
    let read_limited = |p: &Path, limit: usize| -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::fs::File::open(p)?
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)?;
        Ok(buf)
    };
    let refuse = |message: String| {
        Refused(vec![Refusal {
            file: file.clone(),
            line: None,
            message,
        }])
    };
    let bytes =
        read_limited(path, MAX_INVENTORY).map_err(|e| refuse(format!("cannot read: {e}")))?;
    if bytes.len() > MAX_INVENTORY {
        return Err(refuse("larger than 16 MiB".into()));
    }
    let text = String::from_utf8(bytes).map_err(|_| refuse("not UTF-8".into()))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse(&text, &file, &mut |rel| {
        read_limited(&dir.join(rel), MAX_DOMAIN_XML)
    })
}
