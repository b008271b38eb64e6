//! Zone signing keys: read from and written to the BIND `Private-key-format: v1.2` text that
//! `pdnsutil export-zone-key` prints, published as DNSKEY RDATA, and used to sign and verify.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, UnparsedPublicKey,
};
use zeroize::Zeroizing;

/// DNSKEY flags of a zone-signing key (Zone Key bit).
pub const FLAGS_ZSK: u16 = 256;
/// DNSKEY flags of a key-signing key (Zone Key + Secure Entry Point bits).
pub(crate) const FLAGS_KSK: u16 = 257;

/// DNSSEC algorithms dnsteer signs with (IANA numbers). RSA is left out on purpose: slow to
/// sign online and large answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// 13, RFC 6605.
    EcdsaP256Sha256,
    /// 15, RFC 8080.
    Ed25519,
}

impl Algorithm {
    /// The IANA algorithm number, as carried in DNSKEY, RRSIG and DS.
    pub(crate) fn number(self) -> u8 {
        match self {
            Algorithm::EcdsaP256Sha256 => 13,
            Algorithm::Ed25519 => 15,
        }
    }

    pub(crate) fn from_number(number: u8) -> Option<Self> {
        match number {
            13 => Some(Algorithm::EcdsaP256Sha256),
            15 => Some(Algorithm::Ed25519),
            _ => None,
        }
    }

    /// The mnemonic BIND writes after the number on the `Algorithm:` line.
    pub(crate) fn mnemonic(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256Sha256 => "ECDSAP256SHA256",
            Algorithm::Ed25519 => "ED25519",
        }
    }

    /// Bytes of one signature: both are fixed-size, so an RRSIG's size is known before signing.
    pub(crate) fn signature_len(self) -> usize {
        64
    }
}

/// IANA mnemonics of the algorithms we refuse, so the error names what the operator exported.
fn iana_mnemonic(number: u8) -> &'static str {
    match number {
        1 => "RSAMD5",
        3 => "DSA",
        5 => "RSASHA1",
        6 => "DSA-NSEC3-SHA1",
        7 => "RSASHA1-NSEC3-SHA1",
        8 => "RSASHA256",
        10 => "RSASHA512",
        12 => "ECC-GOST",
        13 => "ECDSAP256SHA256",
        14 => "ECDSAP384SHA384",
        15 => "ED25519",
        16 => "ED448",
        _ => "unassigned",
    }
}

/// Why a key file or key could not be used. No variant carries key material: these messages
/// end up in logs.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("private key file line {line}: expected `Field: value`")]
    MalformedLine { line: usize },
    #[error("private key file line {line}: unknown field (not a BIND v1.x private-key field)")]
    UnknownField { line: usize },
    #[error("private key file: `{0}` appears more than once")]
    DuplicateField(&'static str),
    #[error("private key file: the `{0}` line is missing")]
    MissingField(&'static str),
    #[error("private key file: unsupported Private-key-format (only v1.x is read)")]
    UnsupportedFormat,
    #[error("private key file: the Algorithm line does not start with a number")]
    MalformedAlgorithm,
    #[error(
        "DNSSEC algorithm {number} ({name}) is not supported: dnsteer signs with 13 (ECDSAP256SHA256) or 15 (ED25519)"
    )]
    UnsupportedAlgorithm { number: u8, name: &'static str },
    #[error("private key file: PrivateKey is not valid base64")]
    InvalidBase64,
    #[error("private key is {got} bytes, algorithm {algorithm} needs {expected}")]
    WrongKeyLength {
        algorithm: u8,
        expected: usize,
        got: usize,
    },
    #[error("private key is not a valid P-256 scalar (zero or not below the group order)")]
    InvalidScalar,
    #[error("the crypto library rejected the key pair")]
    Rejected,
    #[error("the system random source failed")]
    Random,
}

impl KeyError {
    pub fn kind(&self) -> &'static str {
        match self {
            KeyError::MalformedLine { .. } => "malformed_line",
            KeyError::UnknownField { .. } => "unknown_field",
            KeyError::DuplicateField(_) => "duplicate_field",
            KeyError::MissingField(_) => "missing_field",
            KeyError::UnsupportedFormat => "unsupported_format",
            KeyError::MalformedAlgorithm => "malformed_algorithm",
            KeyError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            KeyError::InvalidBase64 => "invalid_base64",
            KeyError::WrongKeyLength { .. } => "wrong_key_length",
            KeyError::InvalidScalar => "invalid_scalar",
            KeyError::Rejected => "rejected",
            KeyError::Random => "random",
        }
    }
}

/// A signing failure: ring's ECDSA signer draws a random nonce, and only that can fail.
#[derive(Debug, thiserror::Error)]
#[error("signing failed (system random source)")]
pub struct SignFailed;

enum Pair {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One private key and its public half, ready to sign.
///
/// `Debug` shows the algorithm and key tags only, never the key.
pub struct SigningKey {
    algorithm: Algorithm,
    pair: Pair,
    /// DNSKEY public key field: x||y (64 bytes, RFC 6605 §4) or the Ed25519 point (32 bytes).
    public_key: Box<[u8]>,
    /// Kept only to write the key file back; wiped on drop.
    secret: Zeroizing<[u8; 32]>,
    rng: SystemRandom,
}

// One key is shared by all workers behind an `Arc`.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<SigningKey>();
};

impl SigningKey {
    /// Reads BIND `Private-key-format: v1.2` text (what `pdnsutil export-zone-key` prints).
    /// Timing lines (Created, Publish, Activate, ...) are accepted and ignored.
    pub(crate) fn from_private_key_file(text: &str) -> Result<Self, KeyError> {
        let mut format = None;
        let mut algorithm = None;
        let mut private_key: Option<&str> = None;
        // Reported after the algorithm check, so an RSA export (whose Modulus etc. lines are
        // unknown here) says "algorithm 8 is not supported" rather than "unknown field".
        let mut unknown_line = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with(';') {
                continue;
            }
            let (field, value) = raw
                .split_once(':')
                .ok_or(KeyError::MalformedLine { line })?;
            let value = value.trim();
            let slot = match field.trim() {
                "Private-key-format" => &mut format,
                "Algorithm" => &mut algorithm,
                "PrivateKey" => &mut private_key,
                // BIND's timing metadata: when to publish or use the key, which the operator
                // manages in PowerDNS, not here.
                "Created" | "Publish" | "Activate" | "Inactive" | "Delete" | "SyncPublish"
                | "SyncDelete" | "Revoke" | "DSPublish" | "DSRemoved" | "PublishCDS"
                | "DeleteCDS" => continue,
                _ => {
                    unknown_line.get_or_insert(line);
                    continue;
                }
            };
            if slot.replace(value).is_some() {
                return Err(KeyError::DuplicateField(match field.trim() {
                    "Private-key-format" => "Private-key-format",
                    "Algorithm" => "Algorithm",
                    _ => "PrivateKey",
                }));
            }
        }
        let format = format.ok_or(KeyError::MissingField("Private-key-format"))?;
        // v1.2 and v1.3 differ only in the timing fields ignored above.
        if !format.starts_with("v1.") {
            return Err(KeyError::UnsupportedFormat);
        }
        let algorithm = algorithm.ok_or(KeyError::MissingField("Algorithm"))?;
        let digits = algorithm
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .filter(|d| !d.is_empty())
            .ok_or(KeyError::MalformedAlgorithm)?;
        let number: u8 = digits.parse().map_err(|_| KeyError::MalformedAlgorithm)?;
        let algorithm = Algorithm::from_number(number).ok_or(KeyError::UnsupportedAlgorithm {
            number,
            name: iana_mnemonic(number),
        })?;
        if let Some(line) = unknown_line {
            return Err(KeyError::UnknownField { line });
        }
        let private_key = private_key.ok_or(KeyError::MissingField("PrivateKey"))?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(private_key)
                .map_err(|_| KeyError::InvalidBase64)?,
        );
        Self::from_private_bytes(algorithm, &bytes)
    }

    /// A key from its raw private part: the P-256 scalar or the Ed25519 seed, 32 bytes each.
    pub(crate) fn from_private_bytes(
        algorithm: Algorithm,
        private: &[u8],
    ) -> Result<Self, KeyError> {
        let secret: Zeroizing<[u8; 32]> =
            Zeroizing::new(private.try_into().map_err(|_| KeyError::WrongKeyLength {
                algorithm: algorithm.number(),
                expected: 32,
                got: private.len(),
            })?);
        let rng = SystemRandom::new();
        let (pair, public_key): (Pair, Box<[u8]>) = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                // Derivation of the public point is p256's whole job here (see Cargo.toml).
                let scalar = p256::SecretKey::from_bytes(p256::FieldBytes::from_slice(&secret[..]))
                    .map_err(|_| KeyError::InvalidScalar)?;
                let point = scalar.public_key().to_encoded_point(false);
                let sec1 = point.as_bytes();
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &secret[..],
                    sec1,
                    &rng,
                )
                .map_err(|_| KeyError::Rejected)?;
                // SEC1 uncompressed is 0x04 || x || y; DNSKEY carries x || y.
                (Pair::P256(pair), sec1[1..].into())
            }
            Algorithm::Ed25519 => {
                let pair = Ed25519KeyPair::from_seed_unchecked(&secret[..])
                    .map_err(|_| KeyError::Rejected)?;
                let public_key = pair.public_key().as_ref().into();
                (Pair::Ed25519(pair), public_key)
            }
        };
        Ok(Self {
            algorithm,
            pair,
            public_key,
            secret,
            rng,
        })
    }

    /// A new random key, for dnsteer's own ZSK.
    pub fn generate(algorithm: Algorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let mut bytes = Zeroizing::new([0u8; 32]);
        loop {
            rng.fill(&mut bytes[..]).map_err(|_| KeyError::Random)?;
            match Self::from_private_bytes(algorithm, &bytes[..]) {
                // A P-256 scalar must be in [1, n): about one draw in 2^32 is not.
                Err(KeyError::InvalidScalar) => continue,
                other => return other,
            }
        }
    }

    /// The key in BIND `Private-key-format: v1.2` text, readable by
    /// [`SigningKey::from_private_key_file`] and by `pdnsutil import-zone-key`. The caller writes
    /// it with mode 0600.
    pub(crate) fn to_private_key_file(&self) -> String {
        format!(
            "Private-key-format: v1.2\nAlgorithm: {} ({})\nPrivateKey: {}\n",
            self.algorithm.number(),
            self.algorithm.mnemonic(),
            BASE64.encode(&self.secret[..]),
        )
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The DNSKEY public key field (RFC 6605 §4, RFC 8080 §3).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// DNSKEY RDATA: flags, protocol 3, algorithm, public key (RFC 4034 §2.1).
    pub(crate) fn dnskey_rdata(&self, flags: u16) -> Vec<u8> {
        let mut rdata = Vec::with_capacity(4 + self.public_key.len());
        rdata.extend_from_slice(&flags.to_be_bytes());
        rdata.push(3);
        rdata.push(self.algorithm.number());
        rdata.extend_from_slice(&self.public_key);
        rdata
    }

    /// The key tag of this key published with `flags` (RFC 4034 Appendix B).
    pub fn key_tag(&self, flags: u16) -> u16 {
        key_tag(&self.dnskey_rdata(flags))
    }

    /// Signs `data` (RRSIG RDATA without the signature || the canonical RRset).
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SignFailed> {
        Ok(match &self.pair {
            Pair::P256(pair) => pair
                .sign(&self.rng, data)
                .map_err(|_| SignFailed)?
                .as_ref()
                .to_vec(),
            Pair::Ed25519(pair) => pair.sign(data).as_ref().to_vec(),
        })
    }

    /// Whether `signature` over `data` verifies against this key's public half: checked on a
    /// key's first signature before its answers go out.
    pub(crate) fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        verify(self.algorithm, &self.public_key, data, signature)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm.mnemonic())
            .field("key_tag_zsk", &self.key_tag(FLAGS_ZSK))
            .field("key_tag_ksk", &self.key_tag(FLAGS_KSK))
            .finish_non_exhaustive()
    }
}

/// Verifies a DNSSEC signature against a DNSKEY public key field.
pub(crate) fn verify(
    algorithm: Algorithm,
    dnskey_public_key: &[u8],
    data: &[u8],
    signature: &[u8],
) -> bool {
    match algorithm {
        Algorithm::EcdsaP256Sha256 => {
            // ring wants the SEC1 form back: 0x04 || x || y.
            let mut sec1 = [0u8; 65];
            if dnskey_public_key.len() != 64 {
                return false;
            }
            sec1[0] = 4;
            sec1[1..].copy_from_slice(dnskey_public_key);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &sec1[..])
                .verify(data, signature)
                .is_ok()
        }
        Algorithm::Ed25519 => UnparsedPublicKey::new(&ED25519, dnskey_public_key)
            .verify(data, signature)
            .is_ok(),
    }
}

/// RFC 4034 Appendix B: the ones'-complement-like sum over the DNSKEY RDATA.
pub(crate) fn key_tag(dnskey_rdata: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, &byte) in dnskey_rdata.iter().enumerate() {
        sum += if i & 1 == 0 {
            u32::from(byte) << 8
        } else {
            u32::from(byte)
        };
    }
    sum += (sum >> 16) & 0xffff;
    (sum & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC6605_PRIVATE: &str = "Private-key-format: v1.2\n\
        Algorithm: 13 (ECDSAP256SHA256)\n\
        PrivateKey: GU6SnQ/Ou+xC5RumuIUIuJZteXT2z0O/ok1s38Et6mQ=\n";
    const RFC6605_DNSKEY: &str =
        "GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edbkrSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==";

    #[test]
    fn rfc6605_key_derives_the_published_dnskey_and_tag() {
        let key = SigningKey::from_private_key_file(RFC6605_PRIVATE).unwrap();
        assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
        assert_eq!(BASE64.encode(key.public_key()), RFC6605_DNSKEY);
        let rdata = key.dnskey_rdata(FLAGS_KSK);
        assert_eq!(&rdata[..4], &[1, 1, 3, 13]);
        assert_eq!(&rdata[4..], &BASE64.decode(RFC6605_DNSKEY).unwrap()[..]);
        assert_eq!(key.key_tag(FLAGS_KSK), 55648);
    }

    #[test]
    fn rfc8080_ed25519_key_derives_the_published_dnskey_and_tag() {
        let text = "Private-key-format: v1.2\nAlgorithm: 15 (ED25519)\n\
            PrivateKey: ODIyNjAzODQ2MjgwODAxMjI2NDUxOTAyMDQxNDIyNjI=\n";
        let key = SigningKey::from_private_key_file(text).unwrap();
        assert_eq!(
            BASE64.encode(key.public_key()),
            "l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4="
        );
        assert_eq!(key.key_tag(FLAGS_KSK), 3613);
    }

    #[test]
    fn timing_lines_and_comments_are_ignored() {
        let text = format!(
            "; exported\n{RFC6605_PRIVATE}Created: 20260101000000\nPublish: 20260101000000\n\
             Activate: 20260101000000\n"
        );
        let key = SigningKey::from_private_key_file(&text).unwrap();
        assert_eq!(key.key_tag(FLAGS_KSK), 55648);
    }

    #[test]
    fn unsupported_algorithm_is_named() {
        let text = "Private-key-format: v1.2\nAlgorithm: 8 (RSASHA256)\nModulus: AQAB\n\
            PublicExponent: AQAB\n";
        let err = SigningKey::from_private_key_file(text).unwrap_err();
        assert_eq!(err.kind(), "unsupported_algorithm");
        let message = err.to_string();
        assert!(message.contains("8 (RSASHA256)"), "{message}");
    }

    #[test]
    fn errors_never_echo_key_material() {
        let secret = "GU6SnQ/Ou+xC5RumuIUIuJZteXT2z0O/ok1s38Et6mQ";
        let cases = [
            format!("Private-key-format: v1.2\nAlgorithm: 13\nPrivateKey: {secret}!\n"),
            format!("Private-key-format: v1.2\nAlgorithm: 13\nPrivateKey: {secret}A=\n"),
            format!("Private-key-format: v1.2\nAlgorithm: 13\n{secret}\n"),
            format!("Private-key-format: v1.2\nAlgorithm: 13\nX{secret}: 1\n"),
            format!("Private-key-format: v2.0\nAlgorithm: 13\nPrivateKey: {secret}=\n"),
            format!("Private-key-format: v1.2\nAlgorithm: x{secret}\nPrivateKey: {secret}=\n"),
        ];
        for case in cases {
            let err = SigningKey::from_private_key_file(&case).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("GU6SnQ"), "{shown}");
        }
        let key = SigningKey::from_private_key_file(RFC6605_PRIVATE).unwrap();
        let shown = format!("{key:?}");
        assert!(
            !shown.contains("GU6SnQ") && shown.contains("55648"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_inputs_have_typed_errors() {
        let kind = |text: &str| SigningKey::from_private_key_file(text).unwrap_err().kind();
        assert_eq!(kind("Algorithm: 13\nPrivateKey: AAAA\n"), "missing_field");
        assert_eq!(
            kind("Private-key-format: v1.2\nAlgorithm: 13\nPrivateKey: AAAA\n"),
            "wrong_key_length"
        );
        // The group order n is not a valid scalar, nor is zero.
        let order = "/////wAAAAD//////////7zm+q2nF56E87nKwvxjJVE=";
        assert_eq!(
            kind(&format!(
                "Private-key-format: v1.2\nAlgorithm: 13\nPrivateKey: {order}\n"
            )),
            "invalid_scalar"
        );
        let zero = BASE64.encode([0u8; 32]);
        assert_eq!(
            kind(&format!(
                "Private-key-format: v1.2\nAlgorithm: 13\nPrivateKey: {zero}\n"
            )),
            "invalid_scalar"
        );
        assert_eq!(
            kind("Private-key-format: v1.2\nAlgorithm: 13\nAlgorithm: 13\n"),
            "duplicate_field"
        );
        assert_eq!(
            kind("Private-key-format: v1.2\nAlgorithm: 13\nPrivateKye: AAAA\n"),
            "unknown_field"
        );
    }

    #[test]
    fn generated_keys_round_trip_through_the_key_file_and_sign() {
        for algorithm in [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519] {
            let key = SigningKey::generate(algorithm).unwrap();
            let text = key.to_private_key_file();
            let again = SigningKey::from_private_key_file(&text).unwrap();
            assert_eq!(key.public_key(), again.public_key());
            assert_eq!(key.key_tag(FLAGS_ZSK), again.key_tag(FLAGS_ZSK));
            let signature = key.sign(b"data").unwrap();
            assert_eq!(signature.len(), algorithm.signature_len());
            assert!(again.verify(b"data", &signature));
            assert!(!again.verify(b"datb", &signature));
        }
    }
}
