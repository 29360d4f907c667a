//! The bloom builder against an independent implementation (`bloom_vectors.py`, written
//! from the SipHash paper and the spec), for the parameters sd-bus and the selftests use.

use kdbus::abi::BloomParameter;
use kdbus::bloom::Bloom;
use std::process::Command;

fn python_bits(size: u64, n_hash: u64, elements: &[&str]) -> Option<Vec<u64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bloom_vectors.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(size.to_string())
        .arg(n_hash.to_string())
        .args(elements)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .ok()?
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect(),
    )
}

fn rust_bits(size: u64, n_hash: u64, elements: &[&str]) -> Vec<u64> {
    let mut b = Bloom::new(BloomParameter { size, n_hash });
    for e in elements {
        b.add(e.as_bytes());
    }
    let mut bits = Vec::new();
    for (i, w) in b.words().iter().enumerate() {
        for bit in 0..64 {
            if w & (1 << bit) != 0 {
                bits.push(i as u64 * 64 + bit);
            }
        }
    }
    bits
}

#[test]
fn builder_matches_the_independent_implementation() {
    let cases: &[(u64, u64, &[&str])] = &[
        (64, 8, &["message-type:signal"]),
        (
            64,
            8,
            &[
                "interface:org.freedesktop.DBus",
                "member:NameOwnerChanged",
                "path:/org/freedesktop/DBus",
            ],
        ),
        (64, 1, &["arg0:org.example.Foo"]),
        (8, 1, &["x"]),
        (4096, 4, &["path-slash-prefix:/", "arg12-dot-prefix:a.b."]),
        (
            256,
            8,
            &[
                "",
                "a somewhat longer element that spans several siphash blocks",
            ],
        ),
    ];
    let Some(_) = python_bits(64, 1, &["probe"]) else {
        panic!("python3 is needed for this test (it is in .ci/run's set-up)");
    };
    for (size, n_hash, elements) in cases {
        let want = python_bits(*size, *n_hash, elements).unwrap();
        assert_eq!(
            rust_bits(*size, *n_hash, elements),
            want,
            "size {size} k {n_hash} {elements:?}"
        );
    }
}
