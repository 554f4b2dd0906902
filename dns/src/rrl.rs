//! Response rate limiting: at most `responses_per_second` answers per client
//! prefix (IPv4 /24, IPv6 /56) per second; over the limit, every `slip`-th
//! answer goes out truncated (a real client retries over TCP) and the rest are
//! dropped. Off when the rate is 0.

use std::collections::HashMap;
use std::net::IpAddr;

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Truncate,
    Drop,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    slip: u32,
    second: u64,
    counts: HashMap<[u8; 8], u32>,
}

/// Clients tracked per second at most; beyond it new prefixes are limited as one.
const MAX_PREFIXES: usize = 65_536;

impl RateLimiter {
    pub fn new(responses_per_second: u32, slip: u32) -> RateLimiter {
        RateLimiter {
            rate: responses_per_second,
            slip,
            second: 0,
            counts: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0
    }

    /// Counts one answer to `client` at Unix second `now`.
    pub fn check(&mut self, client: IpAddr, now: u64) -> Verdict {
        if self.rate == 0 {
            return Verdict::Send;
        }
        if now != self.second {
            self.second = now;
            self.counts.clear();
        }
        let mut prefix = [0u8; 8];
        match client {
            IpAddr::V4(a) => prefix[..3].copy_from_slice(&a.octets()[..3]),
            IpAddr::V6(a) => {
                prefix[0] = 6;
                prefix[1..8].copy_from_slice(&a.octets()[..7]);
            }
        }
        if self.counts.len() >= MAX_PREFIXES && !self.counts.contains_key(&prefix) {
            prefix = [0xff; 8];
        }
        let n = self.counts.entry(prefix).or_insert(0);
        *n += 1;
        if *n <= self.rate {
            Verdict::Send
        } else if self.slip > 0 && (*n - self.rate).is_multiple_of(self.slip) {
            Verdict::Truncate
        } else {
            Verdict::Drop
        }
    }
}

/// `answer` cut to its header and question, with TC set (the RRL "slip").
pub fn truncated(answer: &[u8]) -> Option<Vec<u8>> {
    if answer.len() < 12 || answer[4..6] != [0, 1] {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*answer.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    let mut out = answer.get(..i + 4)?.to_vec();
    out[2] |= 0x02;
    out[6..12].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_the_rate_gets_every_second_answer_truncated_and_the_rest_dropped() {
        let mut rrl = RateLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let same_prefix: IpAddr = "10.0.0.200".parse().unwrap();
        let other: IpAddr = "10.0.1.1".parse().unwrap();
        let v: Vec<Verdict> = (0..3).map(|_| rrl.check(a, 100)).collect();
        assert_eq!(v, vec![Verdict::Send; 3]);
        assert_eq!(rrl.check(same_prefix, 100), Verdict::Drop);
        assert_eq!(rrl.check(a, 100), Verdict::Truncate);
        assert_eq!(rrl.check(other, 100), Verdict::Send);
        assert_eq!(
            rrl.check(a, 101),
            Verdict::Send,
            "a new second, a new budget"
        );
        assert_eq!(RateLimiter::new(0, 2).check(a, 1), Verdict::Send);
    }
}
