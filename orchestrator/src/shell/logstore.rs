//! The Raft log and its hard state, kept in memory for raft-rs to read and,
//! for a real appliance, written through to an embedded redb database before
//! anything that depends on it is sent. The simulator keeps the in-memory part
//! across simulated crashes, which is exactly what a disk would keep.

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::{MemStorage, Storage};
use raft::{GetEntriesContext, RaftState};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Log entries by index (protobuf-encoded `eraftpb.Entry`).
const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
/// `hard_state` and `conf_state` (protobuf-encoded).
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Errors of the on-disk log.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("the Raft log at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("writing the Raft log failed: {0}")]
    Write(String),
    #[error("the Raft log is corrupt: {0}")]
    Corrupt(String),
}

fn write_err(e: impl std::fmt::Display) -> LogStoreError {
    LogStoreError::Write(e.to_string())
}

/// The log store. Cloning shares it.
#[derive(Clone)]
pub struct LogStore {
    mem: MemStorage,
    disk: Option<Arc<Database>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("durable", &self.disk.is_some())
            .finish()
    }
}

impl LogStore {
    /// A store that lives in memory only (the simulator's "disk").
    pub fn in_memory() -> LogStore {
        LogStore {
            mem: MemStorage::new(),
            disk: None,
        }
    }

    /// Opens (or creates) the durable log at `path` and loads it.
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let open_err = |e: &dyn std::fmt::Display| LogStoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        let mem = MemStorage::new();
        {
            let txn = db.begin_write().map_err(|e| open_err(&e))?;
            txn.open_table(ENTRIES).map_err(|e| open_err(&e))?;
            txn.open_table(META).map_err(|e| open_err(&e))?;
            txn.commit().map_err(|e| open_err(&e))?;
        }
        let txn = db.begin_read().map_err(|e| open_err(&e))?;
        let meta = txn.open_table(META).map_err(|e| open_err(&e))?;
        let mut core = mem.wl();
        if let Some(v) = meta.get("conf_state").map_err(|e| open_err(&e))? {
            let cs = ConfState::parse_from_bytes(v.value())
                .map_err(|e| LogStoreError::Corrupt(format!("conf_state: {e}")))?;
            core.set_conf_state(cs);
        }
        let entries = txn.open_table(ENTRIES).map_err(|e| open_err(&e))?;
        let mut loaded = Vec::new();
        for item in entries.iter().map_err(|e| open_err(&e))? {
            let (k, v) = item.map_err(|e| open_err(&e))?;
            let e = Entry::parse_from_bytes(v.value())
                .map_err(|err| LogStoreError::Corrupt(format!("entry {}: {err}", k.value())))?;
            let expected = loaded.last().map_or(1, |p: &Entry| p.index + 1);
            if e.index != k.value() || e.index != expected {
                return Err(LogStoreError::Corrupt(format!(
                    "the entry stored at {} claims index {} where {expected} should follow",
                    k.value(),
                    e.index
                )));
            }
            loaded.push(e);
        }
        if let Some(first) = loaded.first() {
            if first.index != 1 {
                return Err(LogStoreError::Corrupt(format!(
                    "the log starts at index {}, but hinan never compacts it",
                    first.index
                )));
            }
        }
        core.append(&loaded).map_err(|e| {
            LogStoreError::Corrupt(format!("entries do not follow each other: {e}"))
        })?;
        if let Some(v) = meta.get("hard_state").map_err(|e| open_err(&e))? {
            let hs = HardState::parse_from_bytes(v.value())
                .map_err(|e| LogStoreError::Corrupt(format!("hard_state: {e}")))?;
            let last = loaded.last().map_or(0, |e| e.index);
            if hs.commit > last {
                return Err(LogStoreError::Corrupt(format!(
                    "the hard state says index {} is committed, but the log ends at {last}",
                    hs.commit
                )));
            }
            core.set_hardstate(hs);
        }
        drop(core);
        Ok(LogStore {
            mem,
            disk: Some(Arc::new(db)),
        })
    }

    /// Whether the store has never been initialised (no members yet).
    pub fn is_blank(&self) -> bool {
        self.mem
            .initial_state()
            .map(|s| s.conf_state.voters.is_empty() && s.conf_state.learners.is_empty())
            .unwrap_or(true)
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&self, ents: &[Entry]) -> Result<(), LogStoreError> {
        if ents.is_empty() {
            return Ok(());
        }
        if let Some(db) = &self.disk {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut t = txn.open_table(ENTRIES).map_err(write_err)?;
                let first = ents[0].index;
                t.retain_in(first.., |_, _| false).map_err(write_err)?;
                for e in ents {
                    let bytes = e.write_to_bytes().map_err(write_err)?;
                    t.insert(e.index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)?;
        }
        self.mem.wl().append(ents).map_err(write_err)
    }

    pub fn set_hardstate(&self, hs: &HardState) -> Result<(), LogStoreError> {
        self.put_meta("hard_state", &hs.write_to_bytes().map_err(write_err)?)?;
        self.mem.wl().set_hardstate(hs.clone());
        Ok(())
    }

    pub fn set_commit(&self, commit: u64) -> Result<(), LogStoreError> {
        let mut hs = self.mem.rl().hard_state().clone();
        hs.commit = commit;
        self.set_hardstate(&hs)
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.put_meta("conf_state", &cs.write_to_bytes().map_err(write_err)?)?;
        self.mem.wl().set_conf_state(cs.clone());
        Ok(())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), LogStoreError> {
        if let Some(db) = &self.disk {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut t = txn.open_table(META).map_err(write_err)?;
                t.insert(key, value).map_err(write_err)?;
            }
            txn.commit().map_err(write_err)?;
        }
        Ok(())
    }

    /// All entries from `from` on (for the simulator's log checks).
    pub fn entries_from(&self, from: u64) -> Vec<Entry> {
        let last = self.mem.last_index().unwrap_or(0);
        let first = self.mem.first_index().unwrap_or(1).max(from);
        if first > last {
            return Vec::new();
        }
        self.mem
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap_or_default()
    }

    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    #[test]
    fn the_durable_log_survives_a_reopen_and_conflicts_are_truncated() {
        let dir = std::env::temp_dir().join(format!("hinan-logstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft.redb");
        {
            let s = LogStore::open(&path).unwrap();
            assert!(s.is_blank());
            let mut cs = ConfState::default();
            cs.voters = vec![1, 2, 3];
            s.set_conf_state(&cs).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrites index 3 onward.
            s.append(&[entry(3, 2, b"C")]).unwrap();
            let mut hs = HardState::default();
            hs.term = 2;
            hs.vote = 2;
            hs.commit = 3;
            s.set_hardstate(&hs).unwrap();
        }
        let s = LogStore::open(&path).unwrap();
        assert!(!s.is_blank());
        assert_eq!(s.hard_state().term, 2);
        assert_eq!(s.hard_state().commit, 3);
        let ents = s.entries_from(1);
        let got: Vec<(u64, u64, Vec<u8>)> = ents
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, b"a".to_vec()),
                (2, 1, b"b".to_vec()),
                (3, 2, b"C".to_vec())
            ]
        );
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_gap_in_the_log_or_a_commit_past_its_end_is_reported() {
        let dir = std::env::temp_dir().join(format!("hinan-logstore-gap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft.redb");
        {
            let s = LogStore::open(&path).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
            let mut hs = HardState::default();
            hs.term = 1;
            hs.commit = 5;
            s.set_hardstate(&hs).unwrap();
        }
        let err = LogStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("log ends at 2"), "{err}");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ENTRIES).unwrap();
                let e = entry(4, 1, b"d").write_to_bytes().unwrap();
                t.insert(4u64, e.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = LogStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("where 3 should follow"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_reported_not_panicked_on() {
        let dir = std::env::temp_dir().join(format!("hinan-logstore-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ENTRIES).unwrap();
                t.insert(1u64, &[0xff_u8, 0xff, 0xff][..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = LogStore::open(&path).unwrap_err();
        assert!(
            matches!(err, LogStoreError::Corrupt(_) | LogStoreError::Open { .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
