//! Name-derived answers, as PowerDNS 4.7.3 computes them: `createReverse`, `createReverse6`,
//! `createForward`, `createForward6` and `filterForward`.
//!
//! Each reproduces the 4.7.3 function byte for byte (checked against a live 4.7.3, see
//! `tests/lua_generators.rs`), including its quirks: `createForward` reads the query name relative
//! to the *zone* apex (not the wildcard), takes a `-`-separated label's octets verbatim, parses a
//! hex label only when it is exactly 10 bytes long and gives `0.0.0.0` for anything else;
//! `createForward6` fails (SERVFAIL) on a one-label or eight-label name that is no address; the
//! result text is then read as the record type's presentation format, as PowerDNS does (so
//! `0x1-2-3-4` SERVFAILs an A record). Per query everything happens in stack buffers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::config::RecordType;

/// Longest text a generator may produce (longer: SERVFAIL; PowerDNS would fail on the name).
const TEXT: usize = 2048;

/// `DNSName::hash()` of PowerDNS (`burtleCI`: lookup2 over the lower-cased wire name, root
/// label included, initval 0), which `picknamehashed` (4.9+) takes modulo the weight sum.
pub(crate) fn name_hash(qname: &[u8]) -> u32 {
    let mut lower = [0u8; 256];
    let n = qname.len().min(lower.len());
    lower[..n].copy_from_slice(&qname[..n]);
    lower[..n].make_ascii_lowercase();
    crate::steer::hash::lookup2(&lower[..n], 0)
}

/// An address the function answers with fixed text instead of the format.
pub(crate) type Exception = (IpAddr, Box<[u8]>);

/// One piece of a `boost::format` string: literal text or a positional argument `%N%`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Lit(Box<[u8]>),
    Arg(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Generator {
    /// `createReverse(format[, exceptions])`; exception values are the text they return.
    Reverse {
        format: Vec<Piece>,
        exceptions: Option<Vec<Exception>>,
    },
    /// `createReverse6(format[, exceptions])`.
    Reverse6 {
        format: Vec<Piece>,
        exceptions: Option<Vec<Exception>>,
    },
    Forward,
    Forward6,
    /// `filterForward(createForward…(), newNMG({…})[, fallback])`.
    Filter {
        inner: Box<Generator>,
        nets: Vec<IpNet>,
        fallback: Option<Box<[u8]>>,
    },
}

/// The generated answer is no valid value of the record type, or the function raised: SERVFAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

/// Parses a `boost::format` string for `args` positional arguments. Supported: literal text,
/// `%%` and `%1%`…`%args%`; anything else is refused so that the record stays with PowerDNS.
pub(crate) fn parse_format(fmt: &[u8], args: u8) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] != b'%' {
            lit.push(fmt[i]);
            i += 1;
            continue;
        }
        if fmt.get(i + 1) == Some(&b'%') {
            lit.push(b'%');
            i += 2;
            continue;
        }
        let digits = fmt[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let n = std::str::from_utf8(&fmt[i + 1..i + 1 + digits])
            .ok()
            .and_then(|d| d.parse::<u8>().ok());
        match (n, fmt.get(i + 1 + digits)) {
            (Some(n), Some(b'%')) if (1..=args).contains(&n) => {
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
                }
                pieces.push(Piece::Arg(n));
                i += digits + 2;
            }
            _ => {
                return Err(format!(
                    "format directive at byte {} is not supported: use %1% to %{args}% or %%",
                    i + 1
                ));
            }
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit.into()));
    }
    Ok(pieces)
}

/// Builds `createReverse`/`createReverse6` from its format and `{['address']='name', …}`
/// exceptions (keys are addresses as PowerDNS reads them; values are answers for `rtype`).
pub(crate) fn reverse_rule(
    six: bool,
    rtype: RecordType,
    format: &[u8],
    exceptions: Option<Vec<(Vec<u8>, Vec<u8>)>>,
) -> Result<Generator, String> {
    let name = if six {
        "createReverse6"
    } else {
        "createReverse"
    };
    let format =
        parse_format(format, if six { 41 } else { 6 }).map_err(|e| format!("{name}(): {e}"))?;
    let exceptions = exceptions
        .map(|list| {
            list.into_iter()
                .map(|(k, v)| {
                    let addr = combo_address(&k).ok_or_else(|| {
                        format!(
                            "{name}() exception key '{}' is not an IP address",
                            String::from_utf8_lossy(&k)
                        )
                    })?;
                    to_rdata(rtype, &v, &mut [0u8; 256]).map_err(|_| {
                        format!(
                            "{name}() exception value '{}' is not a valid {} value",
                            String::from_utf8_lossy(&v),
                            rtype.name()
                        )
                    })?;
                    Ok((addr, v.into()))
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    Ok(if six {
        Generator::Reverse6 { format, exceptions }
    } else {
        Generator::Reverse { format, exceptions }
    })
}

/// Builds `filterForward(inner, newNMG({masks}), fallback)`.
pub(crate) fn filter_rule(
    inner: Generator,
    masks: &[Vec<u8>],
    fallback: Option<Vec<u8>>,
) -> Result<Generator, String> {
    let nets = masks
        .iter()
        .map(|m| {
            let s = std::str::from_utf8(m).unwrap_or("");
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("filterForward(): '{s}' is not a netmask"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Generator::Filter {
        inner: Box::new(inner),
        nets,
        fallback: fallback.map(Into::into),
    })
}

/// A text buffer on the stack; overflowing it marks the result failed.
struct Text {
    buf: [u8; TEXT],
    len: usize,
    overflow: bool,
}

impl Text {
    fn new() -> Text {
        Text {
            buf: [0; TEXT],
            len: 0,
            overflow: false,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn put_decimal(&mut self, v: u32) {
        let mut d = [0u8; 10];
        let mut i = d.len();
        let mut v = v;
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&d[i..]);
    }

    fn put_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.put_v4(a),
            IpAddr::V6(a) => self.put_v6(a),
        }
    }

    fn put_v4(&mut self, a: Ipv4Addr) {
        for (i, o) in a.octets().iter().enumerate() {
            if i > 0 {
                self.put(b".");
            }
            self.put_decimal(u32::from(*o));
        }
    }

    /// glibc `inet_ntop` (what PowerDNS's `ComboAddress::toString` prints).
    fn put_v6(&mut self, a: Ipv6Addr) {
        let w = a.segments();
        // Longest run of zero words (first on ties), at least two long.
        let (mut best, mut cur) = ((0usize, 0usize), (0usize, 0usize));
        for (i, &x) in w.iter().enumerate() {
            if x == 0 {
                if cur.1 == 0 {
                    cur.0 = i;
                }
                cur.1 += 1;
                if cur.1 > best.1 {
                    best = cur;
                }
            } else {
                cur.1 = 0;
            }
        }
        if best.1 < 2 {
            best = (usize::MAX, 0);
        }
        let mut i = 0;
        while i < 8 {
            if i == best.0 {
                if i == 0 {
                    self.put(b":");
                }
                self.put(b":");
                i += best.1;
                continue;
            }
            if i == 6
                && best.0 == 0
                && (best.1 == 6 || (best.1 == 7 && w[7] != 1) || (best.1 == 5 && w[5] == 0xffff))
            {
                let o = a.octets();
                self.put_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
                return;
            }
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let x = w[i];
            let mut started = false;
            for shift in [12, 8, 4, 0] {
                let d = (x >> shift) & 0xf;
                if d != 0 || started || shift == 0 {
                    self.put(&[HEX[usize::from(d)]]);
                    started = true;
                }
            }
            if i < 7 {
                self.put(b":");
            }
            i += 1;
        }
    }
}

/// Labels of a wire name (without the root), as slices; at most 127.
struct Labels<'a> {
    at: [&'a [u8]; 127],
    len: usize,
}

impl<'a> Labels<'a> {
    fn of(name: &'a [u8]) -> Labels<'a> {
        let mut l = Labels {
            at: [&[]; 127],
            len: 0,
        };
        let mut i = 0;
        while let Some(&n) = name.get(i) {
            let n = usize::from(n);
            if n == 0 || l.len == l.at.len() {
                break;
            }
            let Some(label) = name.get(i + 1..i + 1 + n) else {
                break;
            };
            l.at[l.len] = label;
            l.len += 1;
            i += 1 + n;
        }
        l
    }

    fn get(&self, i: usize) -> &'a [u8] {
        self.at[i]
    }
}

impl Generator {
    /// Writes the answer RDATA for `rtype` to `out`. `qname`: the query name in the case the
    /// client wrote it; `zone`: the apex of the record's zone (any case).
    pub(crate) fn rdata(
        &self,
        rtype: RecordType,
        qname: &[u8],
        zone: &[u8],
        out: &mut [u8; 256],
    ) -> Result<usize, Failed> {
        let mut text = Text::new();
        self.text(qname, zone, &mut text)?;
        if text.overflow {
            return Err(Failed);
        }
        to_rdata(rtype, text.as_bytes(), out)
    }

    /// Whether the result depends on the zone apex (`createForward`, `createForward6`).
    pub(crate) fn needs_zone(&self) -> bool {
        match self {
            Generator::Forward | Generator::Forward6 => true,
            Generator::Filter { inner, .. } => inner.needs_zone(),
            Generator::Reverse { .. } | Generator::Reverse6 { .. } => false,
        }
    }

    /// The function's result text.
    fn text(&self, qname: &[u8], zone: &[u8], t: &mut Text) -> Result<(), Failed> {
        match self {
            Generator::Reverse { format, exceptions } => {
                reverse(format, exceptions.as_deref(), qname, t)?;
            }
            Generator::Reverse6 { format, exceptions } => {
                reverse6(format, exceptions.as_deref(), qname, t);
            }
            Generator::Forward => forward(qname, zone, t),
            Generator::Forward6 => forward6(qname, zone, t)?,
            Generator::Filter {
                inner,
                nets,
                fallback,
            } => {
                inner.text(qname, zone, t)?;
                let ip = combo_address(t.as_bytes()).ok_or(Failed)?;
                if nets.iter().any(|n| n.contains(&ip)) {
                    return Ok(());
                }
                t.clear();
                match fallback {
                    Some(f) => t.put(f),
                    None if ip.is_ipv4() => t.put(b"0.0.0.0"),
                    None => t.put(b"::"),
                }
            }
        }
        Ok(())
    }
}

/// `createReverse`: labels 0..3 of the query name (leftmost first) are the address, backwards.
fn reverse(
    format: &[Piece],
    exceptions: Option<&[Exception]>,
    qname: &[u8],
    t: &mut Text,
) -> Result<(), Failed> {
    let l = Labels::of(qname);
    if l.len < 4 {
        t.put(b"unknown");
        return Ok(());
    }
    if let Some(exc) = exceptions {
        // PowerDNS parses the address only when there are exceptions; a name that is no
        // address then raises (SERVFAIL).
        t.put(l.get(3));
        for i in [2, 1, 0] {
            t.put(b".");
            t.put(l.get(i));
        }
        let req = combo_address(t.as_bytes()).ok_or(Failed)?;
        t.clear();
        if let Some((_, v)) = exc.iter().find(|(a, _)| *a == req) {
            t.put(v);
            return Ok(());
        }
    }
    for p in format {
        match p {
            Piece::Lit(s) => t.put(s),
            Piece::Arg(n @ 1..=4) => t.put(l.get(4 - usize::from(*n))),
            Piece::Arg(5) => {
                t.put(l.get(3));
                for i in [2, 1, 0] {
                    t.put(b"-");
                    t.put(l.get(i));
                }
            }
            Piece::Arg(_) => {
                // %6%: "%02x" of atoi() of each label.
                for i in [3, 2, 1, 0] {
                    let v = atoi(l.get(i)) as u32;
                    put_hex02(t, v);
                }
            }
        }
    }
    Ok(())
}

/// C `atoi`: leading whitespace, a sign, decimal digits; 0 when there are none.
fn atoi(s: &[u8]) -> i32 {
    let s = trim_c_space(s);
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for &c in digits.iter().take_while(|c| c.is_ascii_digit()) {
        v = (v * 10 + i64::from(c - b'0')).min(i64::from(u32::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    v as i32
}

/// `printf("%02x", v)`.
fn put_hex02(t: &mut Text, v: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut d = [0u8; 8];
    let mut i = d.len();
    let mut v = v;
    loop {
        i -= 1;
        d[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    if d.len() - i < 2 {
        t.put(b"0");
    }
    t.put(&d[i..]);
}

fn trim_c_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| is_c_space(**c)).count();
    &s[n..]
}

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `createReverse6`: the first character of the 32 leftmost labels, nibbles backwards.
fn reverse6(format: &[Piece], exceptions: Option<&[Exception]>, qname: &[u8], t: &mut Text) {
    let l = Labels::of(qname);
    if l.len < 32 {
        t.put(b"unknown");
        return;
    }
    let nib = |k: usize| l.get(k).first().copied().unwrap_or(b'0');
    let mut together = [0u8; 39];
    for chunk in 0..8 {
        for q in 0..4 {
            together[chunk * 5 + q] = nib(31 - chunk * 4 - q);
        }
        if chunk < 7 {
            together[chunk * 5 + 4] = b':';
        }
    }
    let Some(ip6) = combo_address(&together) else {
        // PowerDNS catches this one and answers "unknown".
        t.put(b"unknown");
        return;
    };
    if let Some((_, v)) = exceptions.and_then(|e| e.iter().find(|(a, _)| *a == ip6)) {
        t.put(v);
        return;
    }
    let mut dashed = Text::new();
    dashed.put_ip(ip6);
    for c in &mut dashed.buf[..dashed.len] {
        if *c == b':' {
            *c = b'-';
        }
    }
    for p in format {
        match p {
            Piece::Lit(s) => t.put(s),
            Piece::Arg(n @ 1..=32) => t.put(l.get(32 - usize::from(*n))),
            Piece::Arg(33) => t.put(dashed.as_bytes()),
            Piece::Arg(n) => {
                let chunk = usize::from(*n - 34);
                t.put(&together[chunk * 5..chunk * 5 + 4]);
            }
        }
    }
}

/// The labels of `qname` left of `zone` (leftmost first), or none when it is not below it.
fn relative<'a>(qname: &'a [u8], zone: &[u8]) -> Labels<'a> {
    let mut l = Labels::of(qname);
    let z = Labels::of(zone).len;
    let tail = qname.len().checked_sub(zone.len()).map(|i| &qname[i..]);
    l.len = if tail.is_some_and(|t| t.eq_ignore_ascii_case(zone)) {
        l.len.saturating_sub(z)
    } else {
        0
    };
    l
}

/// `createForward` (4.7.3).
fn forward(qname: &[u8], zone: &[u8], t: &mut Text) {
    let zeros = |t: &mut Text| {
        t.clear();
        t.put(b"0.0.0.0");
    };
    let p = relative(qname, zone);
    if p.len >= 4 {
        t.put(p.get(0));
        for i in 1..4 {
            t.put(b".");
            t.put(p.get(i));
        }
        match combo_address(t.as_bytes()) {
            Some(ip) => {
                t.clear();
                t.put_ip(ip);
            }
            None => zeros(t),
        }
        return;
    }
    if p.len == 0 {
        return zeros(t);
    }
    let input = p.get(0);
    // boost-free `stringtok(input, "-")`: empty tokens are skipped.
    let mut parts: [&[u8]; 64] = [&[]; 64];
    let mut n = 0;
    for tok in input.split(|c| *c == b'-').filter(|s| !s.is_empty()) {
        if n < parts.len() {
            parts[n] = tok;
        }
        n += 1;
    }
    if n >= 4 && n <= parts.len() {
        for (k, octet) in parts[n - 4..n].iter().enumerate() {
            match stol(octet) {
                Some(v) if (0..=255).contains(&v) => {}
                _ => return zeros(t),
            }
            if k > 0 {
                t.put(b".");
            }
            t.put(octet);
        }
        return;
    }
    if n > parts.len() {
        return zeros(t);
    }
    if input.len() == 10 {
        let mut rest = &input[2..];
        let mut v = [0u32; 4];
        for slot in &mut v {
            match scan_hex2(rest) {
                Some((x, used)) => {
                    *slot = x;
                    rest = &rest[used..];
                }
                None => return zeros(t),
            }
        }
        // 4.7.3 prints the four values as they are: a negative one (`-1`) wraps to a number
        // no A record takes, SERVFAIL (observed).
        for (k, x) in v.iter().enumerate() {
            if k > 0 {
                t.put(b".");
            }
            t.put_decimal(*x);
        }
        return;
    }
    zeros(t);
}

/// `std::stol` as far as it decides validity: leading whitespace, a sign, decimal digits (at
/// least one); trailing bytes ignored. `None` where it throws.
fn stol(s: &[u8]) -> Option<i64> {
    let s = trim_c_space(s);
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in &digits[..n] {
        v = v.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// One `sscanf("%02x")`: whitespace skipped, then at most two bytes of sign and hex digits.
/// Negative values wrap as in C. Returns (value, bytes used).
fn scan_hex2(s: &[u8]) -> Option<(u32, usize)> {
    let skip = s.iter().take_while(|c| is_c_space(**c)).count();
    let s = &s[skip..];
    let mut i = 0;
    let neg = match s.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut v: u32 = 0;
    let start = i;
    while i < 2 {
        let Some(d) = s.get(i).and_then(|c| (*c as char).to_digit(16)) else {
            break;
        };
        v = v * 16 + d;
        i += 1;
    }
    if i == start {
        return None;
    }
    Some((if neg { v.wrapping_neg() } else { v }, skip + i))
}

/// `createForward6` (4.7.3): eight labels joined by `:`, or one label with `-` for `:`. An
/// unparsable address raises (SERVFAIL); other shapes give `::`.
fn forward6(qname: &[u8], zone: &[u8], t: &mut Text) -> Result<(), Failed> {
    let p = relative(qname, zone);
    let mut joined = Text::new();
    match p.len {
        8 => {
            for i in 0..8 {
                if i > 0 {
                    joined.put(b":");
                }
                joined.put(p.get(i));
            }
        }
        1 => {
            joined.put(p.get(0));
            for c in &mut joined.buf[..joined.len] {
                if *c == b'-' {
                    *c = b':';
                }
            }
        }
        _ => {
            t.put(b"::");
            return Ok(());
        }
    }
    let ip = combo_address(joined.as_bytes()).ok_or(Failed)?;
    t.put_ip(ip);
    Ok(())
}

/// `closestMagic()`'s candidates, as 4.7.3 reads them: the query name's labels from the left,
/// each with every `-` made a `.` and parsed as `ComboAddress` (so `inet_aton` forms such as
/// `10-1` or a plain number count too), stopping at the first label that is no address.
/// Nothing is allocated: each label is rewritten in a 63-byte buffer.
pub(crate) fn magic_addresses(qname: &[u8]) -> impl Iterator<Item = IpAddr> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let n = usize::from(*qname.get(at)?);
        let label = qname.get(at + 1..at + 1 + n).filter(|_| n > 0)?;
        at += 1 + n;
        let mut buf = [0u8; 63];
        let text = buf.get_mut(..n)?;
        for (d, s) in text.iter_mut().zip(label) {
            *d = if *s == b'-' { b'.' } else { *s };
        }
        combo_address(text)
    })
}

/// The address `latlonMagic()` locates: labels 3, 2, 1, 0 joined with `.` (a reverse-style
/// name, `139.6.0.193.x.example.` → 193.0.6.139), read as 4.7.3's `Netmask` reads it
/// (`inet_pton`, so no `inet_aton` forms, else IPv6; the part before a `/`). `None`: fewer than
/// four labels (the function returns `unknown`); `Some(None)`: no address (located nowhere).
pub(crate) fn latlon_magic_address(qname: &[u8]) -> Option<Option<IpAddr>> {
    let l = Labels::of(qname);
    if l.len < 4 {
        return None;
    }
    let mut t = Text::new();
    for i in [3, 2, 1, 0] {
        if i < 3 {
            t.put(b".");
        }
        t.put(l.get(i));
    }
    let joined = t.as_bytes();
    let addr = joined.split(|c| *c == b'/').next().unwrap_or(joined);
    Some(
        pton_v4(addr)
            .map(IpAddr::V4)
            .or_else(|| match combo_address(addr) {
                Some(IpAddr::V6(a)) => Some(IpAddr::V6(a)),
                _ => None,
            }),
    )
}

/// glibc `inet_pton(AF_INET)`: exactly four decimal octets, no leading zeros.
fn pton_v4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|c| *c == b'.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') {
            return None;
        }
        if !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *o = u8::try_from(p.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(out))
}

/// `ip` as PowerDNS's `ComboAddress::toString` prints it, read as `rtype`'s presentation
/// format (so an IPv6 address fails an A record).
pub(crate) fn address_rdata(
    rtype: RecordType,
    ip: IpAddr,
    out: &mut [u8; 256],
) -> Result<usize, Failed> {
    let mut t = Text::new();
    t.put_ip(ip);
    to_rdata(rtype, t.as_bytes(), out)
}

/// PowerDNS `ComboAddress(string)`: IPv4 by `inet_aton` (with an optional `:port`), else IPv6.
pub(crate) fn combo_address(s: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = ipv4_with_port(s) {
        return Some(IpAddr::V4(v4));
    }
    let s = std::str::from_utf8(s).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map_or(s, |(inner, _)| inner);
    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// `makeIPv4sockaddr`: `inet_aton`, or `<inet_aton>:<port>` with a whole decimal port.
fn ipv4_with_port(s: &[u8]) -> Option<Ipv4Addr> {
    if s.is_empty() {
        return None;
    }
    let Some(colon) = s.iter().position(|c| *c == b':') else {
        return inet_aton(s);
    };
    let port = &s[colon + 1..];
    if port.is_empty() {
        return None;
    }
    let v = stol(port)?;
    let digits_end = {
        let t = trim_c_space(port);
        let sign = usize::from(matches!(t.first(), Some(b'-' | b'+')));
        port.len() - t.len() + sign + t[sign..].iter().take_while(|c| c.is_ascii_digit()).count()
    };
    if digits_end != port.len() || !(0..=65535).contains(&v) {
        return None;
    }
    inet_aton(&s[..colon])
}

/// glibc `inet_aton`: one to four parts, each decimal, octal (`0…`) or hex (`0x…`).
fn inet_aton(s: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 3];
    let mut n = 0;
    let mut i = 0;
    let val;
    loop {
        if !s.get(i)?.is_ascii_digit() {
            return None;
        }
        let (v, used) = strtoul0(&s[i..])?;
        i += used;
        if s.get(i) == Some(&b'.') {
            if n > 2 || v > 0xff {
                return None;
            }
            parts[n] = v;
            n += 1;
            i += 1;
        } else {
            val = v;
            break;
        }
    }
    match s.get(i) {
        None => {}
        Some(c) if is_c_space(*c) => {}
        Some(_) => return None,
    }
    let max = match n {
        0 => u32::MAX,
        1 => 0xff_ffff,
        2 => 0xffff,
        _ => 0xff,
    };
    if val > max {
        return None;
    }
    let mut addr = val;
    for (k, p) in parts[..n].iter().enumerate() {
        addr |= p << (24 - 8 * k as u32);
    }
    Some(Ipv4Addr::from(addr))
}

/// `strtoul(s, &end, 0)` on a string starting with a digit: (value, bytes used); `None` above
/// 32 bits.
fn strtoul0(s: &[u8]) -> Option<(u32, usize)> {
    let (radix, start) = match s {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (16, 2),
        [b'0', ..] => (8, 0),
        _ => (10, 0),
    };
    let mut v: u64 = 0;
    let mut i = start;
    while let Some(d) = s.get(i).and_then(|c| (*c as char).to_digit(radix)) {
        v = v * u64::from(radix) + u64::from(d);
        if v > u64::from(u32::MAX) {
            return None;
        }
        i += 1;
    }
    Some((v as u32, i.max(1)))
}

/// Reads a function's result text as the record type's presentation format, like PowerDNS.
pub(crate) fn to_rdata(
    rtype: RecordType,
    text: &[u8],
    out: &mut [u8; 256],
) -> Result<usize, Failed> {
    match rtype {
        RecordType::A => {
            let a = pdns_ipv4(text).ok_or(Failed)?;
            out[..4].copy_from_slice(&a);
            Ok(4)
        }
        RecordType::Aaaa => {
            let t = trim_c_space(text);
            let end = t.iter().position(|c| is_c_space(*c)).unwrap_or(t.len());
            let a: Ipv6Addr = std::str::from_utf8(&t[..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Failed)?;
            out[..16].copy_from_slice(&a.octets());
            Ok(16)
        }
        RecordType::Cname | RecordType::Ptr => name_wire(text, out).ok_or(Failed),
        RecordType::Txt => {
            let n = text.len();
            if n > 255 {
                return Err(Failed);
            }
            out[0] = n as u8;
            out[1..=n].copy_from_slice(text);
            Ok(n + 1)
        }
        // Code for include(): never answered.
        RecordType::Lua => Err(Failed),
    }
}

/// PowerDNS's A-record text parser (`RecordTextReader::xfrIP`): four decimal octets, leading
/// spaces skipped, stops at a space.
fn pdns_ipv4(text: &[u8]) -> Option<[u8; 4]> {
    let t = trim_c_space(text);
    if !t.first()?.is_ascii_digit() {
        return None;
    }
    let (mut out, mut octet, mut count, mut digit) = ([0u8; 4], 0u32, 0usize, false);
    for &c in t {
        match c {
            b'.' => {
                if !digit || count >= 3 {
                    return None;
                }
                out[count] = octet as u8;
                count += 1;
                octet = 0;
                digit = false;
            }
            b'0'..=b'9' => {
                octet = octet * 10 + u32::from(c - b'0');
                if octet > 255 {
                    return None;
                }
                digit = true;
            }
            c if is_c_space(c) => break,
            _ => return None,
        }
    }
    if count != 3 || !digit {
        return None;
    }
    out[3] = octet as u8;
    Some(out)
}

/// A presentation name (escapes `\X`, `\DDD`) to wire format, absolute; `None` if invalid.
fn name_wire(text: &[u8], out: &mut [u8; 256]) -> Option<usize> {
    if text == b"." {
        out[0] = 0;
        return Some(1);
    }
    let (mut len, mut label_at, mut i) = (1usize, 0usize, 0usize);
    out[0] = 0;
    while i < text.len() {
        let c = text[i];
        i += 1;
        let byte = match c {
            b'.' => {
                let l = len - label_at - 1;
                if l == 0 {
                    return None;
                }
                out[label_at] = l as u8;
                label_at = len;
                *out.get_mut(len)? = 0;
                len += 1;
                continue;
            }
            b'\\' => {
                let d = text
                    .get(i..i + 3)
                    .filter(|d| d.iter().all(u8::is_ascii_digit));
                match d {
                    Some(d) => {
                        i += 3;
                        let v = d.iter().fold(0u32, |a, x| a * 10 + u32::from(x - b'0'));
                        u8::try_from(v).ok()?
                    }
                    None => {
                        let x = *text.get(i)?;
                        i += 1;
                        x
                    }
                }
            }
            c => c,
        };
        *out.get_mut(len)? = byte;
        len += 1;
        if len - label_at - 1 > 63 {
            return None;
        }
    }
    let l = len - label_at - 1;
    if l > 0 {
        out[label_at] = l as u8;
        *out.get_mut(len)? = 0;
        len += 1;
    }
    (len <= 255 && len > 1).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::name_from_text;

    fn run(g: &Generator, rtype: RecordType, q: &str, zone: &str) -> Option<String> {
        let mut out = [0u8; 256];
        let n = g
            .rdata(
                rtype,
                &name_from_text(q).unwrap(),
                &name_from_text(zone).unwrap(),
                &mut out,
            )
            .ok()?;
        let r = &out[..n];
        Some(match rtype {
            RecordType::A => Ipv4Addr::new(r[0], r[1], r[2], r[3]).to_string(),
            RecordType::Aaaa => Ipv6Addr::from(<[u8; 16]>::try_from(r).unwrap()).to_string(),
            _ => crate::dns::name_text(r),
        })
    }

    #[test]
    fn create_forward_matches_powerdns_4_7_3() {
        // Observed on a live 4.7.3 with `* LUA A "createForward()"` in example.test.
        let cases: &[(&str, Option<&str>)] = &[
            ("1.2.3.4", Some("1.2.3.4")),
            ("1-2-3-4", Some("1.2.3.4")),
            ("ip-1-2-3-4", Some("1.2.3.4")),
            ("ip-c0000201", Some("0.0.0.0")),
            ("c0000201", Some("0.0.0.0")),
            ("ipc0000201", Some("192.0.2.1")),
            ("1.2.3.4.ip", Some("1.2.3.4")),
            ("1-2-3-4.ip", Some("1.2.3.4")),
            ("x.y.ip", Some("0.0.0.0")),
            ("1.2.3.999", Some("0.0.0.0")),
            ("1-2-3-999", Some("0.0.0.0")),
            ("foo", Some("0.0.0.0")),
            ("1.2.3.4.5", Some("1.2.3.4")),
            ("a-b-c-d-1-2-3-4", Some("1.2.3.4")),
            ("0x1-2-3-4", None),
            ("01-02-03-04", Some("1.2.3.4")),
            ("01.02.03.010", Some("1.2.3.8")),
            ("0x1.2.3.4", Some("1.2.3.4")),
            ("ipzzzzzzzz", Some("0.0.0.0")),
            ("ip-01-2-3-4", Some("1.2.3.4")),
            ("x-1-2-3", Some("0.0.0.0")),
            ("ip-1020304", None),
        ];
        for (label, want) in cases {
            let q = format!("{label}.example.test.");
            let got = run(&Generator::Forward, RecordType::A, &q, "example.test.");
            assert_eq!(got.as_deref(), *want, "{q}");
        }
    }

    #[test]
    fn create_forward6_and_filter() {
        let f6 = |q: &str| run(&Generator::Forward6, RecordType::Aaaa, q, "example.test.");
        assert_eq!(
            f6("2001-db8--1.example.test.").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            f6("2001.db8.0.0.0.0.0.1.example.test.").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(f6("20010db8000000000000000000000001.example.test."), None);
        assert_eq!(f6("1-53.example.test."), None);
        assert_eq!(f6("2001-db8--1.ip.example.test.").as_deref(), Some("::"));
        let filter = |fallback: Option<&[u8]>| Generator::Filter {
            inner: Box::new(Generator::Forward),
            nets: vec!["192.0.2.0/24".parse().unwrap()],
            fallback: fallback.map(Into::into),
        };
        let a = |g: &Generator, q: &str| run(g, RecordType::A, q, "example.test.");
        assert_eq!(
            a(&filter(None), "192-0-2-4.example.test.").as_deref(),
            Some("192.0.2.4")
        );
        assert_eq!(
            a(&filter(None), "10-2-3-4.example.test.").as_deref(),
            Some("0.0.0.0")
        );
        assert_eq!(
            a(&filter(Some(b"192.0.2.99")), "10-2-3-4.example.test.").as_deref(),
            Some("192.0.2.99")
        );
        assert_eq!(a(&filter(Some(b"")), "10-2-3-4.example.test."), None);
    }

    #[test]
    fn create_reverse_formats_and_exceptions() {
        let g = Generator::Reverse {
            format: parse_format(b"ip-%1%-%2%-%3%-%4%.example.test", 6).unwrap(),
            exceptions: Some(vec![(
                "192.0.2.5".parse().unwrap(),
                b"special.example.test".as_slice().into(),
            )]),
        };
        let ptr = |g: &Generator, q: &str| run(g, RecordType::Ptr, q, "2.0.192.in-addr.arpa.");
        assert_eq!(
            ptr(&g, "4.2.0.192.in-addr.arpa.").as_deref(),
            Some("ip-192-0-2-4.example.test.")
        );
        assert_eq!(
            ptr(&g, "5.2.0.192.in-addr.arpa.").as_deref(),
            Some("special.example.test.")
        );
        assert_eq!(ptr(&g, "foo.2.0.192.in-addr.arpa."), None);
        assert_eq!(
            ptr(&g, "010.2.0.192.in-addr.arpa.").as_deref(),
            Some("ip-192-0-2-010.example.test.")
        );
        assert_eq!(
            ptr(&g, "1.2.3.4.2.0.192.in-addr.arpa.").as_deref(),
            Some("ip-4-3-2-1.example.test.")
        );
        let h = Generator::Reverse {
            format: parse_format(b"%5%.%6%.x.example.test", 6).unwrap(),
            exceptions: None,
        };
        assert_eq!(
            ptr(&h, "7.sub.2.0.192.in-addr.arpa.").as_deref(),
            Some("0-2-sub-7.00020007.x.example.test.")
        );
        assert!(parse_format(b"%s", 6).is_err());
        assert!(parse_format(b"%7%", 6).is_err());
        assert_eq!(
            parse_format(b"a%%b", 6).unwrap(),
            vec![Piece::Lit(b"a%b".as_slice().into())]
        );
    }

    #[test]
    fn create_reverse6_dashes_like_4_7_3() {
        let g = Generator::Reverse6 {
            format: parse_format(b"%33%.v6.example.test", 41).unwrap(),
            exceptions: None,
        };
        let q = |a: &str| {
            let ip: Ipv6Addr = a.parse().unwrap();
            let mut s = String::new();
            for b in ip.octets().iter().rev() {
                s += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s + "ip6.arpa."
        };
        let ptr = |a: &str| run(&g, RecordType::Ptr, &q(a), "8.b.d.0.1.0.0.2.ip6.arpa.");
        assert_eq!(
            ptr("2001:db8::1").as_deref(),
            Some("2001-db8--1.v6.example.test.")
        );
        assert_eq!(
            ptr("2001:db8::").as_deref(),
            Some("2001-db8--.v6.example.test.")
        );
        assert_eq!(
            ptr("2001:db8:0:0:1::").as_deref(),
            Some("2001-db8-0-0-1--.v6.example.test.")
        );
    }

    #[test]
    fn magic_addresses_stop_at_the_first_non_address() {
        let addrs = |name: &str| {
            let wire = crate::dns::name_from_text_keep_case(name).unwrap();
            magic_addresses(&wire)
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addrs("193-0-6-139.8-8-8-8.magic.example.test."),
            ["193.0.6.139", "8.8.8.8"]
        );
        assert_eq!(addrs("8-8-8-8.x.1-1-1-1.example."), ["8.8.8.8"]);
        assert_eq!(
            addrs("1-1-257.0x8-8-8-8.7.x."),
            ["1.1.1.1", "8.8.8.8", "0.0.0.7"]
        );
        assert!(addrs("300-1-1-1.8-8-8-8.x.").is_empty());
        assert!(addrs(".").is_empty());
    }

    #[test]
    fn latlon_magic_reads_four_labels_backwards() {
        let addr = |name: &str| {
            let wire = crate::dns::name_from_text_keep_case(name).unwrap();
            latlon_magic_address(&wire).map(|a| a.map(|a| a.to_string()))
        };
        assert_eq!(
            addr("139.6.0.193.x.test."),
            Some(Some("193.0.6.139".into()))
        );
        assert_eq!(addr("4.3.2.1."), Some(Some("1.2.3.4".into())));
        // inet_pton: no octal, hex or short forms.
        assert_eq!(addr("8.8.8.010.x."), Some(None));
        assert_eq!(addr("8.8.8.0x8.x."), Some(None));
        assert_eq!(addr("1.1.x.y."), Some(None));
        assert_eq!(addr("a.b.c."), None);
    }

    #[test]
    fn inet_ntop_like_glibc() {
        for (a, want) in [
            ("::1", "::1"),
            ("::", "::"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
        ] {
            let mut t = Text::new();
            t.put_v6(a.parse().unwrap());
            assert_eq!(std::str::from_utf8(t.as_bytes()).unwrap(), want);
        }
    }
}
