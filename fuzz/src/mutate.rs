//! Seeded, deterministic mutations of a seed input (a small stand-in for libFuzzer's mutators on
//! stable): bit flips, byte changes, insertions, deletions, duplicated and spliced chunks,
//! truncation and "interesting" values (0, 0xff, 0x7f, digits, `/`, `.`, `\n`, `"`).

/// splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80 09/.\n\"{}[]:-\\";

/// Apply 1 to 4 random mutations to `input`; `other` is a second seed for splicing.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(16));
                v.drain(i..i + n);
            }
            4 if !v.is_empty() => {
                // duplicate a chunk somewhere else
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                // splice: our head, the other seed's tail
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if !v.is_empty() => {
                let keep = rng.below(v.len());
                v.truncate(keep);
            }
            7 if v.len() >= 8 => {
                // an ASCII number where one was (tar header fields are octal text)
                let i = rng.below(v.len() - 7);
                let n = format!("{:o}", rng.next_u64() >> rng.below(60));
                for (j, b) in n.bytes().take(7).enumerate() {
                    v[i + j] = b;
                }
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next_u64() as u8);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_change_the_input() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let seed = b"apiVersion: v1\nkind: Pod\n";
        let xs: Vec<Vec<u8>> = (0..50).map(|_| mutate(seed, b"other", &mut a)).collect();
        let ys: Vec<Vec<u8>> = (0..50).map(|_| mutate(seed, b"other", &mut b)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().filter(|x| x.as_slice() != seed).count() > 40);
    }
}
