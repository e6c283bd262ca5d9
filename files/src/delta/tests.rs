use std::io::Cursor;

use super::*;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn sig_of(basis: &[u8], bs: u32) -> Signature {
    let (sig, whole) = Signature::compute(Cursor::new(basis), bs).unwrap();
    assert_eq!(whole, strong_checksum(basis));
    sig
}

fn ops_for(sig: &Signature, new: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    diff(sig, Cursor::new(new), |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    ops
}

fn literal_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|o| match o {
            Op::Literal(b) => b.len(),
            Op::Copy { .. } => 0,
        })
        .sum()
}

/// Diffs, applies, and checks the result equals `new`; returns the ops.
fn round_trip(basis: &[u8], new: &[u8], bs: u32) -> Vec<Op> {
    let sig = sig_of(basis, bs);
    let ops = ops_for(&sig, new);
    let mut out = Vec::new();
    let n = apply(&mut Cursor::new(basis), &sig, &ops, &mut out).unwrap();
    assert_eq!(n as usize, new.len());
    assert!(
        out == new,
        "reconstruction differs (basis {}, new {}, bs {bs})",
        basis.len(),
        new.len()
    );
    for op in &ops {
        if let Op::Literal(l) = op {
            assert!(!l.is_empty() && l.len() <= MAX_CHUNK);
        }
    }
    ops
}

#[test]
fn rolling_matches_fresh_checksum() {
    let data = noise(1, 5000);
    let w = 700;
    let mut r = Rolling::new(&data[..w]);
    for i in 1..data.len() - w {
        r.roll(data[i - 1], data[i + w - 1]);
        assert_eq!(r.digest(), weak_checksum(&data[i..i + w]), "at {i}");
    }
}

#[test]
fn identical_file_is_only_copies() {
    let data = noise(2, 3 * 65536 + 1234);
    let ops = round_trip(&data, &data, DEFAULT_BLOCK_SIZE);
    assert_eq!(ops, vec![Op::Copy { start: 0, count: 4 }]);
    // Exactly a multiple of the block size, too.
    let data = noise(3, 4 * 4096);
    assert_eq!(
        round_trip(&data, &data, 4096),
        vec![Op::Copy { start: 0, count: 4 }]
    );
}

#[test]
fn one_changed_block_is_about_one_block_of_literals() {
    let bs = 64 * 1024;
    let basis = noise(4, 40 * bs + 999);
    let mut new = basis.clone();
    for b in &mut new[17 * bs + 100..17 * bs + 200] {
        *b ^= 0x5a;
    }
    let ops = round_trip(&basis, &new, bs as u32);
    assert_eq!(literal_bytes(&ops), bs);
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::Copy { .. })).count(),
        2
    );
}

#[test]
fn insertions_and_deletions_shift_blocks_but_still_match() {
    let bs = 4096;
    let basis = noise(5, 100 * bs + 77);
    // 10 bytes inserted near the start: every later block moved.
    let mut new = basis[..1000].to_vec();
    new.extend_from_slice(b"INSERTED!!");
    new.extend_from_slice(&basis[1000..]);
    let ops = round_trip(&basis, &new, bs as u32);
    assert!(literal_bytes(&ops) <= bs + 10, "{}", literal_bytes(&ops));
    // A block's worth removed in the middle, bytes prepended, bytes appended.
    let mut new = b"head".to_vec();
    new.extend_from_slice(&basis[..50 * bs + 3]);
    new.extend_from_slice(&basis[51 * bs + 3..]);
    new.extend_from_slice(b"tail");
    let ops = round_trip(&basis, &new, bs as u32);
    assert!(literal_bytes(&ops) <= 3 * bs, "{}", literal_bytes(&ops));
}

#[test]
fn short_last_block_matches_at_the_end() {
    let bs = 1000;
    let basis = noise(6, 10 * bs + 321);
    let mut new = b"x".to_vec();
    new.extend_from_slice(&basis);
    let ops = round_trip(&basis, &new, bs as u32);
    assert_eq!(literal_bytes(&ops), 1);
    assert_eq!(
        ops.last(),
        Some(&Op::Copy {
            start: 0,
            count: 11
        })
    );
}

#[test]
fn random_data_round_trips() {
    let mut seed = 100;
    for (blen, nlen, bs) in [
        (0, 0, 16),
        (0, 5000, 16),
        (5000, 0, 16),
        (1, 1, 1),
        (37, 1000, 7),
        (4096, 4096, 4096),
        (10_000, 9_999, 512),
        (100_000, 300_000, 1024),
        (300_000, 10_000, 64 * 1024),
    ] {
        seed += 1;
        let basis = noise(seed, blen);
        // Unrelated data.
        round_trip(&basis, &noise(seed + 1000, nlen), bs);
        // Data built from shuffled pieces of the basis and noise.
        let mut new = Vec::new();
        let r = noise(seed + 2000, 64);
        for (i, &x) in r.iter().enumerate() {
            if blen > 0 && x % 3 != 0 {
                let start = (x as usize * 997 + i * 31) % blen;
                let end = (start + x as usize * 13).min(blen);
                new.extend_from_slice(&basis[start..end]);
            } else {
                new.extend_from_slice(&noise(seed + i as u64, x as usize));
            }
        }
        round_trip(&basis, &new, bs);
    }
}

#[test]
fn repeated_blocks_stay_in_runs() {
    let bs = 512;
    let basis = vec![0u8; 20 * bs];
    let ops = round_trip(&basis, &basis, bs as u32);
    assert_eq!(
        ops,
        vec![Op::Copy {
            start: 0,
            count: 20
        }]
    );
}

#[test]
fn signatures_cross_the_wire_and_bad_ones_are_refused() {
    let sig = sig_of(&noise(7, 10_000), 4096);
    let (h, blocks) = sig.to_wire();
    assert_eq!(h.blocks(), 3);
    assert_eq!(Signature::from_wire(h, &blocks).unwrap(), sig);
    assert!(Signature::from_wire(h, &blocks[..2]).is_err());
    let mut bad = blocks.clone();
    bad[1].strong = "zz".into();
    assert!(Signature::from_wire(h, &bad).is_err());
    let huge = SignatureHeader {
        block_size: 1,
        len: u64::MAX,
    };
    assert!(check_header(&huge).is_err());
    assert!(
        check_header(&SignatureHeader {
            block_size: 0,
            len: 0
        })
        .is_err()
    );
}

#[test]
fn copies_outside_the_basis_are_refused() {
    assert_eq!(copy_range(10, 25, 0, 3), Some((0, 25)));
    assert_eq!(copy_range(10, 25, 2, 1), Some((20, 5)));
    assert_eq!(copy_range(10, 25, 2, 2), None);
    assert_eq!(copy_range(10, 25, 0, 0), None);
    assert_eq!(copy_range(10, 25, u64::MAX, 2), None);
    let basis = noise(8, 25);
    let sig = sig_of(&basis, 10);
    let mut out = Vec::new();
    assert!(
        apply(
            &mut Cursor::new(&basis),
            &sig,
            &[Op::Copy { start: 3, count: 1 }],
            &mut out
        )
        .is_err()
    );
}

#[test]
fn block_size_grows_for_huge_files() {
    assert_eq!(block_size_for(0), DEFAULT_BLOCK_SIZE);
    assert_eq!(block_size_for(1 << 30), DEFAULT_BLOCK_SIZE);
    assert_eq!(block_size_for((1 << 30) + 1), 2 * DEFAULT_BLOCK_SIZE);
    assert_eq!(block_size_for(u64::MAX), MAX_BLOCK_SIZE);
}
