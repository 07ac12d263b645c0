//! The simulator's tests, in one binary: the checker fed by hand (it must fail on each kind of
//! violation), property tests over generated workloads, determinism, injected bugs and pinned
//! regression seeds.

mod checker;
mod crashes;
mod determinism;
mod injected_bugs;
mod properties;
mod regressions;
