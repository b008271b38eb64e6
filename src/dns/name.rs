//! Names on the wire: the inline lower-case `WireName` of the packet path, the question-name
//! reader, and conversions between presentation text and uncompressed wire form.

use std::fmt;

use super::ParseError;

/// Lower-cased, uncompressed wire-format name held inline (no allocation).
#[derive(Clone, Copy)]
pub struct WireName {
    buf: [u8; 255],
    len: u8,
}

impl WireName {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Validates an uncompressed wire name (labels ≤ 63, ≤ 255 bytes with the terminator,
    /// nothing after the root label) and lower-cases it. For names built outside a packet,
    /// e.g. from config, so they compare byte-for-byte with `Query::qname`.
    #[cfg(test)]
    pub(crate) fn from_wire(wire: &[u8]) -> Option<WireName> {
        let mut name = WireName::EMPTY;
        match read_qname(wire, 0, &mut name) {
            Ok(end) if end == wire.len() => Some(name),
            _ => None,
        }
    }

    pub(super) const EMPTY: WireName = WireName {
        buf: [0; 255],
        len: 0,
    };
}

impl PartialEq for WireName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for WireName {}

impl fmt::Debug for WireName {
    /// Presentation format (`www.example.com.`), as [`write_name`] writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_name(self.as_bytes(), f)
    }
}

/// Writes an uncompressed wire name in presentation form for logs and debugging
/// (`www.example.com.`, the root as `.`), every byte outside printable ASCII and every `.` or `\`
/// inside a label as `\DDD`; case as given. A malformed name is written as far as it goes.
pub(crate) fn write_name(wire: &[u8], out: &mut impl fmt::Write) -> fmt::Result {
    let mut off = 0;
    while let Some(&len) = wire.get(off) {
        if len == 0 {
            break;
        }
        let label = wire.get(off + 1..off + 1 + len as usize).unwrap_or(&[]);
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.write_char(char::from(b))?;
            } else {
                write!(out, "\\{b:03}")?;
            }
        }
        out.write_char('.')?;
        off += 1 + len as usize;
    }
    if off == 0 {
        out.write_char('.')?;
    }
    Ok(())
}

/// Presentation form of an uncompressed wire name: lower-case, absolute, RFC 1035 escapes
/// (`\.` and `\\` inside a label, `\DDD` outside printable ASCII).
pub(crate) fn name_text(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len() + 1);
    let mut rest = wire;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len);
        let Some((label, tail)) = tail.split_at_checked(len) else {
            break;
        };
        if len == 0 {
            break;
        }
        for &b in label {
            match b.to_ascii_lowercase() {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                c @ 0x21..=0x7e => out.push(char::from(c)),
                c => push_decimal_escape(&mut out, c),
            }
        }
        out.push('.');
        rest = tail;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Appends `\DDD` for `b`.
pub(crate) fn push_decimal_escape(out: &mut String, b: u8) {
    out.push('\\');
    out.push(char::from(b'0' + b / 100));
    out.push(char::from(b'0' + b / 10 % 10));
    out.push(char::from(b'0' + b % 10));
}

/// Why presentation text is not a name dnsteer accepts: labels of printable ASCII without
/// escapes, none empty, at most 63 bytes each and 255 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("a label is empty")]
    EmptyLabel,
    #[error("a label is longer than 63 bytes")]
    LabelTooLong,
    #[error("characters outside printable ASCII (or a backslash)")]
    NotPrintable,
    #[error("longer than 255 bytes on the wire")]
    TooLong,
}

impl NameError {
    /// Static label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            NameError::Empty => "empty",
            NameError::EmptyLabel => "empty_label",
            NameError::LabelTooLong => "label_too_long",
            NameError::NotPrintable => "not_printable",
            NameError::TooLong => "too_long",
        }
    }

    /// One sentence naming the offending text, as configuration errors print it.
    pub(crate) fn describe(&self, text: &str) -> String {
        match self {
            NameError::Empty => "empty name".to_string(),
            NameError::EmptyLabel => format!("\"{text}\" has an empty label"),
            NameError::LabelTooLong => format!("\"{text}\" has a label longer than 63 bytes"),
            NameError::NotPrintable => {
                format!("\"{text}\" has characters outside printable ASCII")
            }
            NameError::TooLong => format!("\"{text}\" is longer than 255 bytes on the wire"),
        }
    }
}

/// Lower-case, uncompressed wire form of a name in presentation text, taken as absolute
/// (`Www.Example` → `\x03www\x07example\x00`, `.` → the root). The form names are compared
/// and asked in.
pub fn name_from_text(text: &str) -> Result<Vec<u8>, NameError> {
    let mut wire = name_from_text_keep_case(text)?;
    // Length bytes are at most 63, below b'A': lower-casing the whole buffer is safe.
    wire.make_ascii_lowercase();
    Ok(wire)
}

/// [`name_from_text`] with the case kept, for names written into RDATA as configured.
pub(crate) fn name_from_text_keep_case(text: &str) -> Result<Vec<u8>, NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    let mut wire = Vec::with_capacity(text.len() + 2);
    let relative = text.strip_suffix('.').unwrap_or(text);
    if !relative.is_empty() {
        for label in relative.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong);
            }
            if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
                return Err(NameError::NotPrintable);
            }
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err(NameError::TooLong);
    }
    Ok(wire)
}

/// Reads the question name at `off` into `name`, lower-cased. Returns the offset after it.
pub(super) fn read_qname(
    pkt: &[u8],
    mut off: usize,
    name: &mut WireName,
) -> Result<usize, ParseError> {
    let mut len = 0usize;
    loop {
        let Some(&label_len) = pkt.get(off) else {
            return Err(ParseError::FormErr("truncated question name"));
        };
        let label_len = label_len as usize;
        if label_len & 0xC0 == 0xC0 {
            return Err(ParseError::FormErr("compression pointer in the question"));
        }
        if label_len > 63 {
            return Err(ParseError::FormErr("label longer than 63 bytes"));
        }
        // Counts the length byte, so the root terminator is counted too (RFC 1035: 255 total).
        if len + 1 + label_len > 255 {
            return Err(ParseError::FormErr("name longer than 255 bytes"));
        }
        let Some(label) = pkt.get(off + 1..off + 1 + label_len) else {
            return Err(ParseError::FormErr("truncated question name"));
        };
        name.buf[len] = label_len as u8;
        for (dst, src) in name.buf[len + 1..len + 1 + label_len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        len += 1 + label_len;
        off += 1 + label_len;
        if label_len == 0 {
            name.len = len as u8;
            return Ok(off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::test_packets::{name, name_of_len};

    #[test]
    fn wire_name_from_wire() {
        let n = WireName::from_wire(&name("A.Example")).unwrap();
        assert_eq!(n.as_bytes(), name("a.example").as_slice());
        assert!(WireName::from_wire(&[1, b'a']).is_none());
        assert!(WireName::from_wire(&[1, b'a', 0, 0]).is_none());
        assert!(WireName::from_wire(&name_of_len(256)).is_none());
    }

    #[test]
    fn names_from_text() {
        assert_eq!(name_from_text("Www.Example.").unwrap(), name("www.example"));
        assert_eq!(name_from_text("www.example").unwrap(), name("www.example"));
        assert_eq!(
            name_from_text_keep_case("Www.Example").unwrap(),
            name("Www.Example")
        );
        assert_eq!(name_from_text(".").unwrap(), [0]);
        assert_eq!(name_from_text(""), Err(NameError::Empty));
        assert_eq!(name_from_text("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(name_from_text(".a"), Err(NameError::EmptyLabel));
        assert_eq!(
            name_from_text(&"a".repeat(64)),
            Err(NameError::LabelTooLong)
        );
        assert_eq!(name_from_text("a b"), Err(NameError::NotPrintable));
        assert_eq!(name_from_text("a\\.b"), Err(NameError::NotPrintable));
        let long = ["x".repeat(63).as_str(); 4].join(".");
        assert_eq!(name_from_text(&long), Err(NameError::TooLong));
        assert!(name_from_text(&long[2..]).is_ok());
    }

    #[test]
    fn name_text_escapes_and_lowercases() {
        assert_eq!(name_text(b"\x00"), ".");
        assert_eq!(name_text(b"\x01*\x03WwW\x00"), "*.www.");
        assert_eq!(name_text(b"\x03a.b\x02\\ \x00"), "a\\.b.\\\\\\032.");
    }

    #[test]
    fn written_names_escape_dots_and_keep_case() {
        let mut s = String::new();
        write_name(b"\x03a.B\x01 \x00", &mut s).unwrap();
        assert_eq!(s, "a\\046B.\\032.");
        for root in [&b"\x00"[..], b""] {
            s.clear();
            write_name(root, &mut s).unwrap();
            assert_eq!(s, ".");
        }
    }
}
