//! k-means per Lloyd iteration (10 iterations from given centres, with and without the
//! distance cache) and k-means++ seeding (one iteration from no centres, with and without the
//! random projection), on the shapes of LoRA unit matrices. Threads: `RANKWISE_BENCH_THREADS`
//! (default 2). Against faiss and scikit-learn: `benches/bench_kmeans.py`.
//!
//! `cargo bench -p rankwise-core --bench kmeans`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use rankwise_core::kmeans::{kmeans, KMeansParams};
use rankwise_core::rng::Xoshiro256;

const SHAPES: [(usize, usize, usize); 3] = [(2000, 1024, 16), (8000, 2048, 16), (8000, 8192, 64)];

fn all(c: &mut Criterion) {
    let threads = std::env::var("RANKWISE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    let mut g = c.benchmark_group("kmeans");
    g.sample_size(10);
    for (n, d, k) in SHAPES {
        let mut rng = Xoshiro256::new(1);
        let x: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32).collect();
        let init = x[..k * d].to_vec();
        let shape = format!("{n}x{d}_k{k}");
        for cache in [true, false] {
            let p = KMeansParams {
                k,
                max_iter: 10,
                tol: 0.0,
                distance_cache: cache,
                ..KMeansParams::default()
            };
            let id = BenchmarkId::new(format!("lloyd10_cache_{cache}"), &shape);
            g.bench_function(id, |b| {
                b.iter(|| pool.install(|| kmeans(&x, n, d, &p, Some(&init)).expect("valid")))
            });
        }
        for projection in [true, false] {
            let p = KMeansParams {
                k,
                max_iter: 1,
                seed_projection: projection,
                ..KMeansParams::default()
            };
            let id = BenchmarkId::new(format!("seeding_projection_{projection}"), &shape);
            g.bench_function(id, |b| {
                b.iter(|| pool.install(|| kmeans(&x, n, d, &p, None).expect("valid")))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, all);
criterion_main!(benches);
