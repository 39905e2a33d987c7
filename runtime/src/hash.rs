//! XXH64, the 64-bit xxHash (Yann Collet's specification, `xxhash_spec.md`).
//!
//! Why here and not a dependency: graft hashes every byte of a model once to fingerprint
//! it ([`Model::fingerprint`](crate::Model::fingerprint)); that needs a fast,
//! well-specified, stable hash in `no_std`, and XXH64 is ~40 lines. It reads four 64-bit
//! lanes per 32-byte stripe, so it runs at memory speed rather than a byte-at-a-time
//! hash's ~1 GB/s. Not cryptographic: it detects accidental differences, not forgeries.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `data` with `seed`.
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len();
    let mut i = 0;
    let mut h = if len >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        for stripe in data.chunks_exact(32) {
            for (lane, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, u64_at(stripe, lane * 8));
            }
        }
        i = len - len % 32;
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len as u64);
    while i + 8 <= len {
        h = (h ^ round(0, u64_at(data, i))).rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        i += 8;
    }
    if i + 4 <= len {
        h = (h ^ u64::from(u32_at(data, i)).wrapping_mul(P1)).rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        i += 4;
    }
    for &b in &data[i..] {
        h = (h ^ u64::from(b).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::xxh64;

    /// Reference values from the xxHash C library 0.8.1 (`XXH64()` through Python
    /// `ctypes` on `libxxhash.so.0`), for byte `i` = (31·i + 7) mod 251: every tail path
    /// (1, 4 and 8-byte steps) with and without the 32-byte stripe loop.
    #[test]
    fn matches_the_reference_library() {
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
        let cases: [(usize, u64, u64); 13] = [
            (1, 0xa96c7f0ce858bbb7, 0x585882422a6165e7),
            (3, 0x56e6957632a487f9, 0x5acb303e78133c22),
            (4, 0xc60d15b1e3ff8f04, 0x7d51d5e2461732b3),
            (7, 0xafbefc3d6c6f9a8e, 0x2ce9adec2b2c8104),
            (8, 0x3da5c7aa269683e0, 0x758848f033fa76a2),
            (31, 0x3391303d485e846e, 0xf51c93235f2511cb),
            (32, 0x40b7aff75d45bbc8, 0x5d7420e008fd87b8),
            (33, 0x4997cae4951c17a5, 0x55a3cecd9490ae56),
            (63, 0x2944b4dafc69b206, 0x26a888f0a86aca92),
            (64, 0xbb76f6ef19bd5a1b, 0x51dc1183ebcfbe79),
            (100, 0xf0b29a915621716d, 0xe93a69cdbe4cc97b),
            (1000, 0x9e3300c1cde3c58d, 0x923a32ec0386c267),
            (4099, 0x81751ee72efcff40, 0x589944e67d8ebf73),
        ];
        for (n, unseeded, seeded) in cases {
            let data: alloc::vec::Vec<u8> = (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect();
            assert_eq!(xxh64(&data, 0), unseeded, "length {n}");
            assert_eq!(xxh64(&data, 0x9e37_79b9_7f4a_7c15), seeded, "length {n}, seeded");
        }
    }
}
