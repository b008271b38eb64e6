//! The hashes PowerDNS uses to pick answers per client, reproduced bit for bit so that moving a
//! record from PowerDNS to dnsteer moves no client (`lua-records.md` §5).

use std::net::IpAddr;

/// Bob Jenkins' 1996 "lookup2" hash (`burtle()` in PowerDNS). Key words are read little-endian
/// whatever the host, as PowerDNS does on the x86/arm hosts the answers were observed on.
pub(crate) fn lookup2(key: &[u8], initval: u32) -> u32 {
    let mut a: u32 = 0x9e37_79b9;
    let mut b: u32 = 0x9e37_79b9;
    let mut c: u32 = initval;
    let mut k = key;
    while k.len() >= 12 {
        a = a.wrapping_add(le32(&k[0..4]));
        b = b.wrapping_add(le32(&k[4..8]));
        c = c.wrapping_add(le32(&k[8..12]));
        (a, b, c) = mix(a, b, c);
        k = &k[12..];
    }
    c = c.wrapping_add(key.len() as u32);
    // Leftover bytes: 0..4 into a, 4..8 into b, 8..11 into c one byte up (its low byte is the
    // length added above).
    for (i, &byte) in k.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    (_, _, c) = mix(a, b, c);
    c
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 13);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 8);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 13);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 12);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 16);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 5);
    a = a.wrapping_sub(b).wrapping_sub(c) ^ (c >> 3);
    b = b.wrapping_sub(c).wrapping_sub(a) ^ (a << 10);
    c = c.wrapping_sub(a).wrapping_sub(b) ^ (b >> 15);
    (a, b, c)
}

/// `ComboAddress::addressOnlyHash`: lookup2 over the raw address bytes (4 or 16), initval 0.
pub(crate) fn addr_hash(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => lookup2(&v4.octets(), 0),
        IpAddr::V6(v6) => lookup2(&v6.octets(), 0),
    }
}

/// Bucket counts libstdc++ grows an `unordered_map` through (max load factor 1), starting from
/// the 13 buckets observed for PowerDNS's weighted lists.
const BUCKETS: [usize; 12] = [
    13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043,
];

/// Largest weighted list whose PowerDNS iteration order we can reproduce.
pub(crate) const MAX_WEIGHTED_ENTRIES: usize = 42043;

/// Iteration order of the libstdc++ `unordered_map<int, …>` PowerDNS fills with keys 1..=n from a
/// weighted Lua list: returns written indices (0-based) in the order PowerDNS walks them. Each new
/// key is prepended; a rehash (n exceeds the bucket count) first reverses the list. So n ≤ 13 is
/// the reverse written order, 14..=29 is `n-1, …, 13, 0, …, 12`, and so on.
/// None when n exceeds [`MAX_WEIGHTED_ENTRIES`].
pub(crate) fn libstdcxx_order(n: usize) -> Option<Vec<usize>> {
    if n > MAX_WEIGHTED_ENTRIES {
        return None;
    }
    let mut buckets = 0;
    // Built reversed (appending is prepending in the reversed view), flipped at the end.
    let mut rev: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        if i + 1 > BUCKETS[buckets] {
            buckets += 1;
            rev.reverse();
        }
        rev.push(i);
    }
    rev.reverse();
    Some(rev)
}

/// The ring points of one `pickchashed` entry: lookup2 of `"<entry>-<i>"` for i in 0..weight.
pub(crate) fn chashed_points(entry: &[u8], weight: u32) -> Vec<u32> {
    let mut key = Vec::with_capacity(entry.len() + 11);
    (0..weight)
        .map(|i| {
            key.clear();
            key.extend_from_slice(entry);
            key.push(b'-');
            key.extend_from_slice(i.to_string().as_bytes());
            lookup2(&key, 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> u32 {
        addr_hash(s.parse().unwrap())
    }

    #[test]
    fn spec_test_vectors() {
        // lua-records.md §5: h, h mod 2, h mod 3, h mod 60.
        let vectors: [(&str, u32, u32, u32, u32); 9] = [
            ("0.0.0.0", 2305145833, 1, 1, 13),
            ("127.0.0.1", 4196678856, 0, 0, 36),
            ("10.20.30.0", 1186181911, 1, 1, 31),
            ("192.0.2.0", 1089457031, 1, 2, 11),
            ("198.51.100.0", 1337944138, 0, 1, 58),
            ("203.0.113.0", 1884288890, 0, 2, 50),
            ("203.0.113.77", 1510608864, 0, 0, 24),
            ("2001:db8::", 429933902, 0, 2, 2),
            ("::1", 1530700467, 1, 0, 27),
        ];
        for (addr, hash, m2, m3, m60) in vectors {
            let got = h(addr);
            assert_eq!(got, hash, "{addr}");
            assert_eq!((got % 2, got % 3, got % 60), (m2, m3, m60), "{addr}");
        }
        assert_eq!(h("0.0.0.0"), 0x8965_bbe9);
    }

    #[test]
    fn lookup2_covers_every_tail_length() {
        // From shared/pdns-lua/pdnshash.py: lookup2(bytes(range(n)), 0) for n in 0..=24.
        let key: Vec<u8> = (0u8..24).collect();
        let got: Vec<u32> = (0..=24).map(|n| lookup2(&key[..n], 0)).collect();
        let want: [u32; 25] = [
            3175731469, 1843378377, 3517935498, 3326321328, 2182922971, 1679514057, 3830176946,
            3497315996, 2761028756, 2628535116, 2906355716, 4052338821, 2579356143, 3970800397,
            3901812187, 3520013781, 2900675975, 1465025579, 2270167859, 673523791, 1020529142,
            3746960358, 3936030369, 2676677502, 1987588997,
        ];
        assert_eq!(got, want);
        assert_ne!(lookup2(b"abc", 0), lookup2(b"abc", 1));
    }

    #[test]
    fn libstdcxx_order_matches_the_observed_rule() {
        assert_eq!(libstdcxx_order(3).unwrap(), vec![2, 1, 0]);
        assert_eq!(
            libstdcxx_order(13).unwrap(),
            (0..13).rev().collect::<Vec<_>>()
        );
        // 14 entries: n, 1, 2, …, 13 in 1-based keys.
        let mut want = vec![13];
        want.extend(0..13);
        assert_eq!(libstdcxx_order(14).unwrap(), want);
        // 29: 29..14 then 1..13.
        let mut want: Vec<usize> = (13..29).rev().collect();
        want.extend(0..13);
        assert_eq!(libstdcxx_order(29).unwrap(), want);
        // 30: rehash at 30 reverses [29..14, 1..13] then prepends 30.
        let mut want = vec![29];
        want.extend((0..13).rev());
        want.extend(13..29);
        assert_eq!(libstdcxx_order(30).unwrap(), want);
        assert!(libstdcxx_order(MAX_WEIGHTED_ENTRIES + 1).is_none());
        let big = libstdcxx_order(1000).unwrap();
        let mut sorted = big.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }
}
