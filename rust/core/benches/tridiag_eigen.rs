//! The top-k tridiagonal eigensolver per build (scalar and AVX2: the same bytes, see
//! `simd`), on a random spectrum and on a decaying one like a Gram matrix's (eigenvalues near
//! 1/j, whose top eigenvalues chain into one dstein cluster, the expensive case).
//!
//! `cargo bench -p rankwise-core --bench tridiag_eigen`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use rankwise_core::linalg::tridiag_eigen::top_k_with;
use rankwise_core::rng::XorShift64;
use rankwise_core::simd::Level;

fn all(c: &mut Criterion) {
    let mut g = c.benchmark_group("tridiag_eigen");
    g.sample_size(20);
    for (n, k) in [(512usize, 16usize), (4096, 64)] {
        let mut r = XorShift64::new(9);
        let d: Vec<f64> = (0..n).map(|_| r.next_signed()).collect();
        let e: Vec<f64> = (0..n - 1).map(|_| r.next_signed()).collect();
        let dg: Vec<f64> = (0..n).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let eg: Vec<f64> = (0..n - 1).map(|i| 0.3 / (1.0 + i as f64)).collect();
        for (name, d, e) in [("random", &d, &e), ("decaying", &dg, &eg)] {
            for level in Level::available() {
                let mut v = vec![0.0; n * k];
                let id = BenchmarkId::new(format!("{name}_{}", level.name()), format!("{n}x{k}"));
                g.bench_function(id, |b| {
                    b.iter(|| top_k_with(d, e, k, &mut v, level).expect("converges"))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, all);
criterion_main!(benches);
