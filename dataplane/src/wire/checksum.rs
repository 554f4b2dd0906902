//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624),
//! the one implementation every header in hinan uses.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A one's complement sum (RFC 1071) of byte strings, added piece by piece.
/// Every piece but the last must have an even length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    /// Adds `bytes` to the sum.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        // Sums native-endian 32-bit words: one's complement addition does not
        // care about byte order (RFC 1071, 2.B) as long as the final fold
        // swaps back, and 2^32 is congruent to 1 modulo 2^16 - 1.
        let mut chunks = bytes.chunks_exact(4);
        let mut acc = self.0;
        for chunk in &mut chunks {
            acc += u64::from(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 4];
            tail[..rest.len()].copy_from_slice(rest);
            acc += u64::from(u32::from_ne_bytes(tail));
        }
        self.0 = acc;
        self
    }

    /// The folded sum, not complemented: what a partial checksum field
    /// holds, and 0xffff over data that carries a correct checksum.
    pub fn fold(self) -> u16 {
        let mut acc = self.0;
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        u16::from_be(acc as u16)
    }

    /// The checksum field's value: the complement of the folded sum.
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the
/// one's complement sum of its 16-bit big-endian words, an odd last byte
/// padded with zero. Data with a correct checksum field sums to zero.
pub fn checksum(data: &[u8]) -> u16 {
    Checksum::default().add(data).finish()
}

/// RFC 1624, equation 3: the checksum after a 16-bit word of the covered
/// data changed from `old` to `new`, `HC' = ~(~HC + ~m + m')`. A corrupt
/// checksum stays corrupt. A word at an odd offset from the start of the
/// covered data straddles two of its words: pass `old` and `new`
/// byte-swapped.
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sum of the IPv4 pseudo-header (RFC 793) for a transport segment of
/// `len` bytes with protocol `protocol`.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> Checksum {
    let mut sum = Checksum::default();
    sum.add(&src.octets())
        .add(&dst.octets())
        .add(&[0, protocol])
        .add(&(len as u16).to_be_bytes());
    sum
}

/// The sum of the IPv6 pseudo-header (RFC 8200, 8.1) for an upper-layer
/// packet of `len` bytes with next header `next_header`.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> Checksum {
    let mut sum = Checksum::default();
    sum.add(&src.octets())
        .add(&dst.octets())
        .add(&(len as u32).to_be_bytes())
        .add(&[0, 0, 0, next_header]);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 the slow way, 16 bits at a time: the independent check.
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn checksum_matches_the_rfc1071_worked_example() {
        // The IPv4 header of a UDP packet 192.168.0.1 -> 192.168.0.199 whose
        // checksum, 0xb861, is the usual textbook example.
        let header: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        let mut filled = header;
        filled[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&filled), 0);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn rfc1624_update_matches_recomputation_on_both_parities() {
        // Words of some data; checksum computed from scratch before and after.
        fn checksum(words: &[u16]) -> u16 {
            let mut sum: u32 = words.iter().map(|&w| u32::from(w)).sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        }
        let mut words = [0x4500, 0x05b4, 0x1234, 0xfedc, 0x0204];
        let before = checksum(&words);
        let old = words[1];
        words[1] = 0x0578;
        assert_eq!(update(before, old, 0x0578), checksum(&words));

        // The value 0x0405 at odd byte offset 3 straddles words 1 and 2.
        let words_of = |b: &[u8; 8]| -> [u16; 4] {
            [0, 2, 4, 6].map(|i| u16::from_be_bytes([b[i], b[i + 1]]))
        };
        let mut bytes = [0x45u8, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x00, 0x01];
        let before = checksum(&words_of(&bytes));
        bytes[3..5].copy_from_slice(&0x0321u16.to_be_bytes());
        let after = update(before, 0x0405u16.swap_bytes(), 0x0321u16.swap_bytes());
        assert_eq!(after, checksum(&words_of(&bytes)));
    }

    #[test]
    fn pseudo_headers_sum_the_rfc_fields() {
        let v4 = pseudo_header_v4(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            6,
            52,
        );
        let bytes = [192, 0, 2, 1, 192, 0, 2, 2, 0, 6, 0, 52];
        assert_eq!(v4.finish(), rfc1071(&bytes));
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let v6 = pseudo_header_v6(src, dst, 6, 1032);
        let bytes = [&src.octets()[..], &dst.octets(), &[0, 0, 4, 8, 0, 0, 0, 6]].concat();
        assert_eq!(v6.finish(), rfc1071(&bytes));
    }

    proptest! {
        #[test]
        fn piecewise_sum_matches_the_slow_one(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
            last in proptest::collection::vec(any::<u8>(), 0..41),
        ) {
            // Every piece but the last has an even length.
            let parts: Vec<Vec<u8>> = parts
                .into_iter()
                .map(|mut p| { p.truncate(p.len() & !1); p })
                .chain(std::iter::once(last))
                .collect();
            let mut sum = Checksum::default();
            for p in &parts {
                sum.add(p);
            }
            prop_assert_eq!(sum.finish(), rfc1071(&parts.concat()));
        }
    }
}
