//! DNSSEC signing cost per answer: one A RRset signed cold (an ECDSA P-256 signature by ring,
//! what every cache miss pays) and the same RRset found in the per-worker signature cache
//! (canonical form + two hashes + a 4-way probe, what every hit pays).
//! Run with `cargo bench --bench dnssec`; the VM is noisy, compare ratios, not ns.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dnsteer::dnssec::{
    Algorithm, FLAGS_ZSK, Outcome, RrsetToSign, SignatureCache, SigningKey, ValidityWindow,
    rrsig_rdata,
};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dnssec");
    g.sample_size(30);

    let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let tag = key.key_tag(FLAGS_ZSK);
    let signer = b"\x07example\x03net\x00";
    let owner = b"\x03www\x07example\x03net\x00";
    let rdatas: &[&[u8]] = &[&[192, 0, 2, 1]];
    let rrset = RrsetToSign {
        owner_wire: owner,
        rtype: 1,
        class: 1,
        ttl: 300,
        rdatas,
    };
    let window = ValidityWindow::at(1_796_374_800);

    g.bench_function("sign_a_rrset_cold", |b| {
        b.iter(|| rrsig_rdata(&key, tag, signer, black_box(&rrset), window).unwrap());
    });

    let mut cache = SignatureCache::new(32_768);
    let (_, outcome) = cache
        .get_or_sign(&key, tag, signer, &rrset, window)
        .unwrap();
    assert_eq!(outcome, Outcome::Miss);
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            let (rdata, outcome) = cache
                .get_or_sign(&key, tag, signer, black_box(&rrset), window)
                .unwrap();
            debug_assert_eq!(outcome, Outcome::Hit);
            rdata.len()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
