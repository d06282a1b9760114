//! The hand-written dense linear algebra, free of files and formats: the low-rank svd of a sum
//! of rank-one updates through Gram matrices, and the symmetric tridiagonal route it takes
//! (blocked Householder reduction, then bisection and inverse iteration for the top k
//! eigenpairs). faer supplies the GEMM and the Cholesky factor.

pub mod lowrank_svd;
pub mod target_norm;
pub mod tridiag_eigen;
pub mod tridiag_reduce;
