//! The blocked tridiagonal reduction against faer's own `tridiag_in_place` (unblocked, with
//! the Householder block size 1 and faer's recommended one), the back-transformation Q·Z of
//! k = 16 vectors against faer's blocked Householder sequence, and the panel width and
//! crossover of the blocking. Single-threaded, as the svd runs it.
//!
//! `cargo bench -p rankwise-core --bench tridiag_reduce [-- FILTER]`; the ratio that matters
//! is `reduce/ours` against `reduce/faer_h1` at the same n (benches/RESULTS.md).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::evd::tridiag::{tridiag_in_place, tridiag_in_place_scratch};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::qr::no_pivoting::factor::recommended_block_size;
use faer::{Conj, Mat, Par};

use rankwise_core::linalg::tridiag_reduce::{apply_q, reduce, reduce_with};
use rankwise_core::rng::XorShift64;
use rankwise_core::scalar::Real;
use rankwise_core::simd::Level;

const SIZES: [usize; 5] = [64, 128, 256, 512, 1024];

/// A random symmetric n × n matrix, column-major.
fn random_sym<T: Real>(n: usize, seed: u64) -> Vec<T> {
    let mut r = XorShift64::new(seed);
    let mut a = vec![T::ZERO; n * n];
    for j in 0..n {
        for i in j..n {
            let v = T::from_f64(r.next_signed());
            a[j * n + i] = v;
            a[i * n + j] = v;
        }
    }
    a
}

/// faer's reduction of `a` in place, with Householder blocks of `h_block`.
fn faer_tridiag<T: Real>(a: &[T], n: usize, h_block: usize) -> (Mat<T>, Mat<T>) {
    let mut m = Mat::from_fn(n, n, |i, j| a[j * n + i]);
    let mut h = Mat::<T>::zeros(h_block, n - 1);
    let mut buf = MemBuffer::new(tridiag_in_place_scratch::<T>(
        n,
        Par::Seq,
        Default::default(),
    ));
    tridiag_in_place(
        m.as_mut(),
        h.as_mut(),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    );
    (m, h)
}

fn reduction<T: Real>(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group(format!("reduce_{name}"));
    g.sample_size(20);
    for n in SIZES {
        let a = random_sym::<T>(n, 1);
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n - 1];
        let mut tau = vec![T::ZERO; n - 1];
        g.bench_function(BenchmarkId::new("ours", n), |b| {
            b.iter_batched_ref(
                || a.clone(),
                |x| reduce(x, n, &mut d, &mut e, &mut tau),
                BatchSize::LargeInput,
            )
        });
        g.bench_function(BenchmarkId::new("faer_h1", n), |b| {
            b.iter(|| faer_tridiag(&a, n, 1))
        });
        let hb = recommended_block_size::<T>(n, n);
        g.bench_function(BenchmarkId::new("faer_hblock", n), |b| {
            b.iter(|| faer_tridiag(&a, n, hb))
        });
    }
    g.finish();
}

fn back_transformation<T: Real>(c: &mut Criterion, name: &str) {
    let mut g = c.benchmark_group(format!("apply_q_{name}"));
    g.sample_size(20);
    let k = 16;
    for n in SIZES {
        let a = random_sym::<T>(n, 1);
        let (mut d, mut e) = (vec![0.0; n], vec![0.0; n - 1]);
        let mut tau = vec![T::ZERO; n - 1];
        let mut ar = a.clone();
        reduce(&mut ar, n, &mut d, &mut e, &mut tau);
        let z0: Vec<T> = random_sym::<T>(n, 2)[..n * k].to_vec();
        g.bench_function(BenchmarkId::new("ours", n), |b| {
            b.iter_batched_ref(
                || z0.clone(),
                |z| apply_q(&ar, n, &tau, z, k),
                BatchSize::LargeInput,
            )
        });
        let hb = recommended_block_size::<T>(n, n);
        let (m, h) = faer_tridiag(&a, n, hb);
        let mut buf = MemBuffer::new(StackReq::any_of(&[
            apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(n, hb, k),
        ]));
        g.bench_function(BenchmarkId::new("faer", n), |b| {
            b.iter_batched_ref(
                || Mat::from_fn(n, k, |i, j| z0[j * n + i]),
                |z| {
                    apply_block_householder_sequence_on_the_left_in_place_with_conj(
                        m.as_ref().submatrix(1, 0, n - 1, n - 1),
                        h.as_ref(),
                        Conj::No,
                        z.as_mut().subrows_mut(1, n - 1),
                        Par::Seq,
                        MemStack::new(&mut buf),
                    )
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// Panel width `nb` and crossover `nx` (the constants NB and NX of the reduction).
fn blocking(c: &mut Criterion) {
    let mut g = c.benchmark_group("blocking_f32");
    g.sample_size(10);
    let level = Level::detect();
    for n in [256, 512] {
        let a = random_sym::<f32>(n, 1);
        let (mut d, mut e) = (vec![0.0; n], vec![0.0; n - 1]);
        let mut tau = vec![0f32; n - 1];
        for nb in [8, 16, 24, 32] {
            for nx in [32, 64] {
                let id = BenchmarkId::new(format!("nb{nb}_nx{nx}"), n);
                g.bench_function(id, |b| {
                    b.iter_batched_ref(
                        || a.clone(),
                        |x| reduce_with(level, nb, nx, x, n, &mut d, &mut e, &mut tau),
                        BatchSize::LargeInput,
                    )
                });
            }
        }
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    reduction::<f32>(c, "f32");
    reduction::<f64>(c, "f64");
    back_transformation::<f32>(c, "f32");
    back_transformation::<f64>(c, "f64");
    blocking(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
