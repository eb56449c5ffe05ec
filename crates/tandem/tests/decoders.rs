//! Every decoder that reads bytes written by another process survives
//! random and mutated input: no panic, no huge allocation, no hang. The same
//! entry points are the cargo-fuzz targets in `fuzz/` (run by
//! scripts/fuzz.sh on nightly); this stable-Rust version runs in CI.

use proptest::prelude::*;
use tandem::__fuzz;

const MAGIC: [u8; 2] = [0x7a, 0xd3];

/// A well-formed frame: header (magic, kind, descriptor count, length) and payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.push(kind);
    f.push(0);
    f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A Done payload: task id, status, body.
fn done(id: u64, status: u8, body: &[u8]) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.push(status);
    p.extend_from_slice(body);
    p
}

/// Valid frames of every kind, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let value = postcard::to_stdvec(&(7u64, String::from("seven"), vec![7u8; 7], Some(-7i32))).unwrap();
    let batch = postcard::to_stdvec(&(vec![Ok::<u64, String>(1), Err("boom".into())], 1234u64)).unwrap();
    let mut seeds: Vec<Vec<u8>> = vec![
        frame(3, &done(1, 0, &value)),
        frame(3, &done(2, 0, &batch)),
        frame(3, &done(3, 1, b"a panic message")),
        frame(3, &done(4, 2, b"a codec message")),
        frame(2, &[0u8; 40]),
        frame(1, &[0u8; 17]),
        frame(7, &[1, 0, 0, 0, 1, 9, 0, 0, 0]),
        frame(8, b"a channel message"),
    ];
    let two: Vec<u8> = seeds[0].iter().chain(seeds[2].iter()).copied().collect();
    seeds.push(two);
    seeds
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Overwrite the length field of the first header.
    Length(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        prop_oneof![Just(u64::MAX), Just(1u64 << 63), Just(1u64 << 40), 0u64..4096]
            .prop_map(Mutation::Length),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
            Mutation::Insert { at, bytes: more } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Length(len) => {
                if bytes.len() >= 12 {
                    bytes[4..12].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
    }
    bytes
}

fn everything(bytes: &[u8]) {
    __fuzz::wire_frames(bytes, 1 << 20);
    __fuzz::wire_frames(bytes, 16);
    __fuzz::done_payload(bytes);
    __fuzz::fixed_layouts(bytes);
    __fuzz::codec(bytes);
    __fuzz::cluster_frames(bytes);
    if bytes.len() > 12 {
        __fuzz::done_payload(&bytes[12..]);
        __fuzz::codec(&bytes[12..]);
    }
}

#[test]
fn valid_seeds_decode_as_frames() {
    for seed in seeds() {
        assert!(__fuzz::wire_frames(&seed, 1 << 20) >= 1, "{seed:?}");
        everything(&seed);
    }
}

#[test]
fn a_huge_length_prefix_is_refused_before_allocating() {
    let mut claim = MAGIC.to_vec();
    claim.extend_from_slice(&[3, 0]);
    claim.extend_from_slice(&(1u64 << 63).to_le_bytes());
    assert_eq!(__fuzz::wire_frames(&claim, u64::MAX >> 1), 0);
    assert_eq!(__fuzz::wire_frames(&claim, 1 << 30), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        everything(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..9,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let bytes = apply(seeds()[seed].clone(), &mutations);
        everything(&bytes);
    }

    #[test]
    fn frames_with_random_payloads_never_panic(
        kind in 0u8..10,
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        everything(&frame(kind, &payload));
        everything(&frame(3, &done(1, kind % 4, &payload)));
    }
}
