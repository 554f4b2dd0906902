//! The fast path: answers to plain queries, keyed by the request's bytes.
//!
//! A request qualifies when it is a standard query for one name, with no
//! answer or authority records and at most a bare OPT record (no EDNS options,
//! which would make answers differ). The key is the request without its ID,
//! with the name lowercased and the EDNS payload size zeroed. Only answers of
//! at most 512 bytes are cached, so no client's payload size could have
//! truncated them. The cached answer gets the request's ID and the request's
//! name bytes (so the case of the question is echoed).

use std::collections::HashMap;

/// Cached answers of one generation of the zones.
#[derive(Debug, Default)]
pub struct AnswerCache {
    generation: u64,
    map: HashMap<Box<[u8]>, Box<[u8]>>,
}

/// At most this many answers are kept (random names cannot fill memory).
pub const CACHE_LIMIT: usize = 4096;
const MAX_KEY: usize = 512;

/// Writes the key of `req` into `key`; returns the key's length and the end
/// of the question name in `req`, or `None` if the request does not qualify.
pub fn cache_key(req: &[u8], key: &mut [u8; MAX_KEY]) -> Option<(usize, usize)> {
    if req.len() < 17 || req.len() - 2 > MAX_KEY {
        return None;
    }
    // QR=0, opcode QUERY, TC=0; QDCOUNT=1, ANCOUNT=NSCOUNT=0, ARCOUNT<=1.
    if req[2] & 0xfa != 0 || req[4..10] != [0, 1, 0, 0, 0, 0] || req[10] != 0 || req[11] > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*req.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 || i + 1 + len > req.len() || i - 12 + len > 254 {
            return None;
        }
        i += 1 + len;
    }
    let name_end = i;
    let question_end = name_end + 4;
    let end = if req[11] == 1 {
        // A bare OPT: root name, type 41, rdlength 0.
        let opt = req.get(question_end..question_end + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[9..11] != [0, 0] {
            return None;
        }
        question_end + 11
    } else {
        question_end
    };
    if end != req.len() {
        return None;
    }
    let klen = req.len() - 2;
    key[..klen].copy_from_slice(&req[2..]);
    key[10..name_end - 2].make_ascii_lowercase();
    if req[11] == 1 {
        // The payload size (the OPT's class) does not change a cached answer.
        let p = question_end - 2 + 3;
        key[p] = 0;
        key[p + 1] = 0;
    }
    Some((klen, name_end))
}

impl AnswerCache {
    /// Writes the cached answer to `req` into `out`; returns its length.
    pub fn lookup(&self, req: &[u8], out: &mut [u8]) -> Option<usize> {
        let mut key = [0u8; MAX_KEY];
        let (klen, name_end) = cache_key(req, &mut key)?;
        let answer = self.map.get(&key[..klen])?;
        let out = out.get_mut(..answer.len())?;
        out.copy_from_slice(answer);
        out[0..2].copy_from_slice(&req[0..2]);
        out[12..name_end].copy_from_slice(&req[12..name_end]);
        Some(answer.len())
    }

    /// Keeps `answer` to `req`, computed at zone generation `generation`.
    pub fn insert(&mut self, generation: u64, req: &[u8], answer: &[u8]) {
        if generation != self.generation || self.map.len() >= CACHE_LIMIT {
            return;
        }
        let mut key = [0u8; MAX_KEY];
        if let Some((klen, _)) = cache_key(req, &mut key) {
            self.map.insert(key[..klen].into(), answer.into());
        }
    }

    /// Drops every answer: the zones are now at `generation`.
    pub fn reset(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
