//! RFC 6962 Merkle tree hashing (also RFC 9162 §2.1): leaf and node hashes,
//! tree heads, inclusion and consistency proofs and their verification.
//!
//! - leaf hash `SHA-256(0x00 ‖ entry)`, node hash `SHA-256(0x01 ‖ left ‖ right)`;
//! - the head of `n` entries splits at the largest power of two below `n`;
//! - the head of no entries is `SHA-256("")`.
//!
//! Proofs are generated from any [`HashSource`]: all leaf hashes in memory
//! (the verifier, tests), or the compact state the log writer keeps (the
//! [`Frontier`] at the last checkpoint plus the leaves since).

use std::collections::HashMap;

use aws_lc_rs::digest;

pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The head of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proof generation gets subtree hashes from.
pub trait HashSource {
    /// The head of entries `lo..hi` (`hi > lo`), if this source can tell.
    fn range(&mut self, lo: u64, hi: u64) -> Option<Hash>;
}

/// Every leaf hash, in memory.
pub struct Leaves<'a>(pub &'a [Hash]);

impl HashSource for Leaves<'_> {
    fn range(&mut self, lo: u64, hi: u64) -> Option<Hash> {
        let slice = self.0.get(usize::try_from(lo).ok()?..usize::try_from(hi).ok()?)?;
        Some(root(slice))
    }
}

/// The head of the tree over `leaves` (RFC 6962 `MTH`).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::default();
    for l in leaves {
        f.push(*l);
    }
    f.root()
}

/// The compact state of a growing tree: the hashes of its maximal perfect
/// subtrees, left to right (at most 64). Enough to compute the head, and to
/// keep growing the tree, without keeping its leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// Rebuilds a frontier from its size and node hashes (as [`Frontier::hashes`] gave them).
    pub fn from_parts(size: u64, hashes: &[Hash]) -> Option<Self> {
        let heights: Vec<u32> = (0..64u32).rev().filter(|b| size & (1 << b) != 0).collect();
        if heights.len() != hashes.len() {
            return None;
        }
        Some(Self {
            size,
            nodes: heights.into_iter().zip(hashes.iter().copied()).collect(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree hashes, left (largest) to right.
    pub fn hashes(&self) -> Vec<Hash> {
        self.nodes.iter().map(|(_, h)| *h).collect()
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.nodes.last() {
            if h != node.0 {
                break;
            }
            self.nodes.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The head of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }

    /// The subtrees as `(lo, hi) → hash`.
    fn ranges(&self) -> HashMap<(u64, u64), Hash> {
        let mut lo = 0;
        let mut out = HashMap::new();
        for &(h, hash) in &self.nodes {
            let hi = lo + (1u64 << h);
            out.insert((lo, hi), hash);
            lo = hi;
        }
        out
    }
}

/// A frontier at size `m` and the leaf hashes after it: what the log writer
/// keeps between checkpoints to prove the entries written since.
pub struct Recent<'a> {
    base: HashMap<(u64, u64), Hash>,
    start: u64,
    leaves: &'a [Hash],
    memo: HashMap<(u64, u64), Hash>,
}

impl<'a> Recent<'a> {
    pub fn new(base: &Frontier, leaves: &'a [Hash]) -> Self {
        Self {
            base: base.ranges(),
            start: base.size(),
            leaves,
            memo: HashMap::new(),
        }
    }
}

impl HashSource for Recent<'_> {
    fn range(&mut self, lo: u64, hi: u64) -> Option<Hash> {
        if let Some(h) = self.base.get(&(lo, hi)).or_else(|| self.memo.get(&(lo, hi))) {
            return Some(*h);
        }
        let h = if hi - lo == 1 {
            *self.leaves.get(usize::try_from(lo.checked_sub(self.start)?).ok()?)?
        } else {
            // Any subtree wholly before `start` that a proof about a later
            // entry needs is one of the base frontier's subtrees; anything
            // else is split until it is.
            if hi <= self.start {
                return None;
            }
            let k = split(hi - lo);
            let l = self.range(lo, lo + k)?;
            let r = self.range(lo + k, hi)?;
            node_hash(&l, &r)
        };
        self.memo.insert((lo, hi), h);
        Some(h)
    }
}

/// RFC 6962 `PATH(index, D[0:size])`: sibling hashes from the leaf up.
pub fn inclusion_proof(src: &mut impl HashSource, index: u64, size: u64) -> Option<Vec<Hash>> {
    if index >= size {
        return None;
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Some(out)
}

fn path(src: &mut impl HashSource, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Option<()> {
    let n = hi - lo;
    if n <= 1 {
        return Some(());
    }
    let k = split(n);
    if m < k {
        path(src, m, lo, lo + k, out)?;
        out.push(src.range(lo + k, hi)?);
    } else {
        path(src, m - k, lo + k, hi, out)?;
        out.push(src.range(lo, lo + k)?);
    }
    Some(())
}

/// RFC 6962 `PROOF(old, D[0:new])`: proves the tree of `old` entries is a
/// prefix of the tree of `new`.
pub fn consistency_proof(src: &mut impl HashSource, old: u64, new: u64) -> Option<Vec<Hash>> {
    if old > new {
        return None;
    }
    let mut out = Vec::new();
    if old == 0 || old == new {
        return Some(out);
    }
    subproof(src, old, 0, new, true, &mut out)?;
    Some(out)
}

fn subproof(src: &mut impl HashSource, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) -> Option<()> {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(src.range(lo, hi)?);
        }
        return Some(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, lo, lo + k, complete, out)?;
        out.push(src.range(lo + k, hi)?);
    } else {
        subproof(src, m - k, lo + k, hi, false, out)?;
        out.push(src.range(lo, lo + k)?);
    }
    Some(())
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is entry `index` of the tree of
/// `size` entries whose head is `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: checks that the tree of `old` entries with head
/// `old_root` is a prefix of the tree of `new` entries with head `new_root`.
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    let (seed, rest) = if old.is_power_of_two() {
        (*old_root, proof)
    } else {
        (*first, rest)
    };
    path.push(seed);
    path.extend_from_slice(rest);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight leaves of the test vectors published with RFC 6962's
    /// reference implementation (certificate-transparency, merkle_tree_test).
    fn vector_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|l| leaf_hash(&hex::decode(l).expect("hex")))
        .collect()
    }

    #[test]
    fn heads_match_the_published_vectors() {
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = vector_leaves();
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (n, want) in roots.iter().enumerate() {
            assert_eq!(hex::encode(root(&leaves[..=n])), *want, "head of {} leaves", n + 1);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_vectors() {
        let leaves = vector_leaves();
        let cases: &[(u64, u64, &[&str])] = &[
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for &(index, size, want) in cases {
            let proof = inclusion_proof(&mut Leaves(&leaves), index, size).expect("proof");
            let got: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(got, want, "PATH({index}, {size})");
            let r = root(&leaves[..size as usize]);
            assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &r));
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_vectors() {
        let leaves = vector_leaves();
        let cases: &[(u64, u64, &[&str])] = &[
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for &(old, new, want) in cases {
            let proof = consistency_proof(&mut Leaves(&leaves), old, new).expect("proof");
            let got: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(got, want, "PROOF({old}, {new})");
            let (r1, r2) = (root(&leaves[..old as usize]), root(&leaves[..new as usize]));
            assert!(verify_consistency(old, new, &r1, &r2, &proof));
        }
    }

    #[test]
    fn every_proof_over_small_trees_verifies_and_no_wrong_one_does() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() as u64 {
            let r = root(&leaves[..n as usize]);
            for i in 0..n {
                let p = inclusion_proof(&mut Leaves(&leaves), i, n).expect("proof");
                assert!(verify_inclusion(&leaves[i as usize], i, n, &p, &r));
                if n > 1 {
                    let other = (i + 1) % n;
                    assert!(!verify_inclusion(&leaves[other as usize], i, n, &p, &r), "{i} of {n}");
                }
            }
            for m in 1..=n {
                let p = consistency_proof(&mut Leaves(&leaves), m, n).expect("proof");
                let rm = root(&leaves[..m as usize]);
                assert!(verify_consistency(m, n, &rm, &r, &p), "{m} -> {n}");
                if m < n {
                    assert!(
                        !verify_consistency(m, n, &r, &r, &p),
                        "{m} -> {n} with a wrong old head"
                    );
                }
            }
        }
    }

    #[test]
    fn the_writers_compact_state_proves_what_the_full_tree_proves() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for m in [0u64, 1, 2, 3, 7, 8, 100, 255, 256, 257] {
            let mut base = Frontier::default();
            for l in &leaves[..m as usize] {
                base.push(*l);
            }
            let rebuilt = Frontier::from_parts(m, &base.hashes()).expect("parts");
            assert_eq!(rebuilt, base);
            for n in [m + 1, m + 2, m + 5, m + 40] {
                let mut recent = Recent::new(&base, &leaves[m as usize..n as usize]);
                for i in m..n {
                    assert_eq!(
                        inclusion_proof(&mut recent, i, n),
                        inclusion_proof(&mut Leaves(&leaves), i, n),
                        "PATH({i}, {n}) from a frontier at {m}"
                    );
                }
                assert_eq!(
                    consistency_proof(&mut recent, m, n),
                    consistency_proof(&mut Leaves(&leaves), m, n),
                    "PROOF({m}, {n})"
                );
            }
        }
    }
}
