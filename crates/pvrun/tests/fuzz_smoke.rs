//! The fuzz targets (`pvrun::fuzzing`) on stable, for `cargo test`: each over
//! its seed corpus (`fuzz/corpus/<target>/`) and a few thousand inputs
//! mutated from it by a fixed-seed generator, so every run tries the same
//! ones. A panic fails the test and leaves the input in
//! `target/fuzz-smoke/<target>.crash`. The long runs are libFuzzer's
//! (`scripts/fuzz.sh`, see `fuzz/README.md`).

use std::path::{Path, PathBuf};

/// Inputs tried per target, beyond the seeds.
const MUTATIONS: usize = 4000;
/// Longest input the generator makes.
const MAX_LEN: usize = 8192;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four of: flip a bit, set a byte to an interesting value, insert
/// random bytes, delete a range, duplicate a range, splice another seed.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0x20];
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 1 => {
                let at = rng.below(len);
                let n = 1 + rng.below(len - at);
                input.drain(at..at + n);
            }
            4 if len > 1 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let chunk = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
    input.truncate(MAX_LEN);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds.push(Vec::new());
    seeds
}

fn crash_file(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-smoke");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{target}.crash"))
}

fn smoke(target: &str, f: fn(&[u8])) {
    let seeds = corpus(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut inputs = seeds.clone();
    for _ in 0..MUTATIONS {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        inputs.push(input);
    }
    for input in &inputs {
        if std::panic::catch_unwind(|| f(input)).is_err() {
            let path = crash_file(target);
            std::fs::write(&path, input).unwrap();
            panic!("{target} panicked on the input saved in {}", path.display());
        }
    }
}

#[test]
fn exit_handler() {
    smoke("exit_handler", pvrun::fuzzing::exit_handler);
}

#[test]
fn loader() {
    smoke("loader", pvrun::fuzzing::loader);
}

#[test]
fn boot_info() {
    smoke("boot_info", pvrun::fuzzing::boot_info);
}

#[test]
fn bench_marker() {
    smoke("bench_marker", pvrun::fuzzing::bench_marker);
}

#[test]
fn vmi_calls() {
    smoke("vmi_calls", pvrun::fuzzing::vmi_calls);
}

#[test]
fn lguest_calls() {
    smoke("lguest_calls", pvrun::fuzzing::lguest_calls);
}
