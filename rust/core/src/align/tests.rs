//! Alignment against brute force and known permutations, signs and scales.

use super::*;
use crate::rng::SplitMix64;

/// Test randomness from the crate's splitmix64, with the draws these tests were written for.
struct Rng(SplitMix64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(SplitMix64(seed))
    }
    fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn shuffle(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

fn assignment_cost(cost: &[f64], n: usize, assign: &[usize]) -> f64 {
    assign
        .iter()
        .enumerate()
        .map(|(i, &j)| cost[i * n + j])
        .sum()
}

fn brute_force(cost: &[f64], n: usize) -> f64 {
    fn rec(cost: &[f64], n: usize, i: usize, used: &mut [bool], acc: f64, best: &mut f64) {
        if i == n {
            *best = best.min(acc);
            return;
        }
        for j in 0..n {
            if !used[j] {
                used[j] = true;
                rec(cost, n, i + 1, used, acc + cost[i * n + j], best);
                used[j] = false;
            }
        }
    }
    let mut best = f64::INFINITY;
    rec(cost, n, 0, &mut vec![false; n], 0.0, &mut best);
    best
}

fn is_permutation(p: &[usize]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter()
        .all(|&j| j < p.len() && !std::mem::replace(&mut seen[j], true))
}

#[test]
fn hungarian_matches_brute_force() {
    let mut rng = Rng::new(7);
    for n in 1..=7 {
        for trial in 0..30 {
            let cost: Vec<f64> = (0..n * n)
                .map(|_| match trial % 3 {
                    0 => rng.uniform() * 10.0 - 5.0,
                    // Ties: few distinct values.
                    1 => rng.below(3) as f64,
                    _ => (rng.normal() as f64) * 1e6,
                })
                .collect();
            let assign = hungarian(&cost, n).unwrap();
            assert!(is_permutation(&assign), "{assign:?}");
            let (got, want) = (assignment_cost(&cost, n, &assign), brute_force(&cost, n));
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "n={n}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn hungarian_ties_and_edge_cases() {
    // All equal: any permutation is optimal; ours is the identity (lowest column first).
    assert_eq!(hungarian(&[1.0; 16], 4).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(hungarian(&[], 0).unwrap(), Vec::<usize>::new());
    assert_eq!(hungarian(&[3.0], 1).unwrap(), vec![0]);
    // A known answer: anti-diagonal is cheapest.
    let c = [9.0, 9.0, 1.0, 9.0, 1.0, 9.0, 1.0, 9.0, 9.0];
    assert_eq!(hungarian(&c, 3).unwrap(), vec![2, 1, 0]);
    assert!(hungarian(&[1.0, 2.0, 3.0], 2)
        .unwrap_err()
        .to_string()
        .contains("square"));
    let e = hungarian(&[1.0, f64::NAN, 0.0, 0.0], 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite") && e.contains("(0, 1)"), "{e}");
    // Deterministic on repeated calls.
    let mut rng = Rng::new(3);
    let cost: Vec<f64> = (0..400).map(|_| rng.below(4) as f64).collect();
    let assign = hungarian(&cost, 20).unwrap();
    assert!(is_permutation(&assign));
    assert_eq!(assign, hungarian(&cost, 20).unwrap());
}

struct Factors {
    a: Vec<f32>, // r × d_in
    b: Vec<f32>, // d_out × r
    r: usize,
    d_out: usize,
    d_in: usize,
}

impl Factors {
    fn random(rng: &mut Rng, r: usize, d_out: usize, d_in: usize) -> Self {
        Factors {
            a: (0..r * d_in).map(|_| rng.normal()).collect(),
            b: (0..d_out * r).map(|_| rng.normal()).collect(),
            r,
            d_out,
            d_in,
        }
    }
    fn view(&self) -> UnitsView<'_> {
        UnitsView::from_factors(&self.a, &self.b, self.r, self.d_out, self.d_in).unwrap()
    }
    /// New unit i = old unit perm[i] times (sign·c, sign/c).
    fn permuted(&self, perm: &[usize], signs: &[f32], scales: &[f32]) -> Self {
        let (r, d_out, d_in) = (self.r, self.d_out, self.d_in);
        let mut a = vec![0f32; r * d_in];
        let mut b = vec![0f32; d_out * r];
        for i in 0..r {
            let (s, c) = (signs[i], scales[i]);
            for k in 0..d_in {
                a[i * d_in + k] = s / c * self.a[perm[i] * d_in + k];
            }
            for o in 0..d_out {
                b[o * r + i] = s * c * self.b[o * r + perm[i]];
            }
        }
        Factors {
            a,
            b,
            r,
            d_out,
            d_in,
        }
    }
    fn units(&self) -> Vec<f32> {
        let w = self.d_out + self.d_in;
        let mut u = vec![0f32; self.r * w];
        for i in 0..self.r {
            for o in 0..self.d_out {
                u[i * w + o] = self.b[o * self.r + i];
            }
            u[i * w + self.d_out..(i + 1) * w]
                .copy_from_slice(&self.a[i * self.d_in..(i + 1) * self.d_in]);
        }
        u
    }
    fn delta(&self) -> Vec<f64> {
        let mut d = vec![0f64; self.d_out * self.d_in];
        for o in 0..self.d_out {
            for k in 0..self.d_in {
                d[o * self.d_in + k] = (0..self.r)
                    .map(|i| self.b[o * self.r + i] as f64 * self.a[i * self.d_in + k] as f64)
                    .sum();
            }
        }
        d
    }
}

#[test]
fn align_recovers_permutation_signs_under_rescaling() {
    let mut rng = Rng::new(11);
    let (r, d_out, d_in) = (8, 13, 17);
    let base = Factors::random(&mut rng, r, d_out, d_in);
    for sim in [Similarity::Delta, Similarity::Units] {
        for _ in 0..5 {
            let perm = rng.shuffle(r);
            let signs: Vec<f32> = (0..r)
                .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
                .collect();
            let scales: Vec<f32> = (0..r).map(|_| 0.1 + 5.0 * rng.uniform() as f32).collect();
            let other = base.permuted(&perm, &signs, &scales);
            // other unit i = base unit perm[i]: base unit perm[i] ↔ other unit i.
            let mut want = vec![0usize; r];
            for (i, &p) in perm.iter().enumerate() {
                want[p] = i;
            }
            let (ru, ou) = (base.units(), other.units());
            let views = [
                (base.view(), other.view()),
                (
                    UnitsView::from_units(&ru, r, d_out, d_in).unwrap(),
                    UnitsView::from_units(&ou, r, d_out, d_in).unwrap(),
                ),
                // Mixed layouts.
                (
                    base.view(),
                    UnitsView::from_units(&ou, r, d_out, d_in).unwrap(),
                ),
            ];
            for (rv, ov) in &views {
                let al = align(rv, ov, sim).unwrap();
                assert_eq!(al.perm, want);
                for i in 0..r {
                    assert_eq!(al.signs[i], signs[al.perm[i]], "sign of unit {i}");
                }
                assert!((al.score - 1.0).abs() < 1e-5, "{}", al.score);
                // Applying the alignment gives back base's units up to scale, and the delta.
                let aligned = other.permuted(&al.perm, &al.signs, &vec![1.0; r]);
                for (x, y) in aligned.delta().iter().zip(base.delta()) {
                    assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn align_many_is_parallel_and_ordered() {
    let mut rng = Rng::new(5);
    let fs: Vec<Factors> = (0..9)
        .map(|_| Factors::random(&mut rng, 6, 10, 12))
        .collect();
    let perms: Vec<Vec<usize>> = (0..9).map(|_| rng.shuffle(6)).collect();
    let others: Vec<Factors> = fs
        .iter()
        .zip(&perms)
        .map(|(f, p)| f.permuted(p, &[1.0; 6], &[2.0; 6]))
        .collect();
    let pairs: Vec<_> = fs
        .iter()
        .zip(&others)
        .map(|(f, o)| (f.view(), o.view()))
        .collect();
    let many = align_many(&pairs, Similarity::Delta).unwrap();
    for ((rv, ov), al) in pairs.iter().zip(&many) {
        assert_eq!(al, &align(rv, ov, Similarity::Delta).unwrap());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(
        pool.install(|| align_many(&pairs, Similarity::Delta))
            .unwrap(),
        many
    );
}

#[test]
fn align_rejects_mismatches() {
    let mut rng = Rng::new(1);
    let (f4, f5) = (
        Factors::random(&mut rng, 4, 6, 7),
        Factors::random(&mut rng, 5, 6, 7),
    );
    let e = align(&f4.view(), &f5.view(), Similarity::Delta).unwrap_err();
    assert!(
        matches!(e, Error::Incompatible { .. }) && e.to_string().contains("equal ranks"),
        "{e}"
    );
    let g = Factors::random(&mut rng, 4, 6, 8);
    let e = align_many(
        &[(f4.view(), f4.view()), (f4.view(), g.view())],
        Similarity::Units,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("pair 1") && e.to_string().contains("6×8"),
        "{e}"
    );
    assert!(UnitsView::from_factors(&f4.a, &f4.b, 4, 6, 8).is_err());
    assert!(UnitsView::from_units(&f4.a, 4, 6, 7).is_err());
    assert!(VecSet::new(&[0.0; 10], 3, 4, 4, 1).is_err());
    assert!(VecSet::new(&[0.0; 10], 3, 4, 3, 1).is_ok());
    assert!(VecSet::new(&[0.0; 10], 2, 2, usize::MAX, 1).is_err());
    assert!(Similarity::parse("cos").is_err());
}

#[test]
fn zero_units_and_rank_zero() {
    let mut rng = Rng::new(2);
    let mut f = Factors::random(&mut rng, 3, 4, 5);
    f.a[5..10].iter_mut().for_each(|v| *v = 0.0); // unit 1 has a = 0
    let al = align(&f.view(), &f.view(), Similarity::Delta).unwrap();
    assert!(is_permutation(&al.perm));
    assert_eq!(al.perm[0], 0);
    assert_eq!(al.perm[2], 2);
    let empty = Factors {
        a: vec![],
        b: vec![],
        r: 0,
        d_out: 4,
        d_in: 5,
    };
    let al = align(&empty.view(), &empty.view(), Similarity::Delta).unwrap();
    assert!(al.perm.is_empty());
}

#[test]
fn delta_gram_matches_direct_computation() {
    let mut rng = Rng::new(9);
    let fs = [
        Factors::random(&mut rng, 3, 7, 5),
        Factors::random(&mut rng, 5, 7, 5),
        Factors::random(&mut rng, 2, 7, 5),
    ];
    let views: Vec<_> = fs.iter().map(|f| f.view()).collect();
    let g = delta_gram(&views).unwrap();
    for i in 0..3 {
        for j in 0..3 {
            let want: f64 = fs[i]
                .delta()
                .iter()
                .zip(fs[j].delta())
                .map(|(x, y)| x * y)
                .sum();
            assert!(
                (g[i * 3 + j] - want).abs() < 1e-4 * want.abs().max(1.0),
                "{i},{j}"
            );
        }
    }
    let bad = Factors::random(&mut rng, 3, 7, 6);
    assert!(delta_gram(&[views[0], bad.view()]).is_err());
    assert!(delta_gram(&[]).unwrap().is_empty());
}
