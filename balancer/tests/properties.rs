//! Property tests over random weights, health states and thread counts.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use std::time::Duration;

use balancer::{
    AllDown, Attempts, HealthPolicy, LeastRequest, MAX_ATTEMPTS, ManualClock, Outcome, RoundRobin,
    SmoothWeighted, Strategy, Target, WeightedTicket,
};
use proptest::prelude::*;

fn targets(weights: &[u32]) -> Vec<Target<usize>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Target::new(i, w))
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn every_strategy(weights: &[u32], policy: HealthPolicy) -> Vec<Box<dyn Strategy<usize>>> {
    vec![
        Box::new(RoundRobin::new(targets(weights), policy.clone())),
        Box::new(WeightedTicket::new(targets(weights), policy.clone())),
        Box::new(SmoothWeighted::new(targets(weights), policy.clone())),
        Box::new(LeastRequest::new(targets(weights), policy)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn smooth_weighted_cycle_gives_each_its_weight_smoothly(
        weights in proptest::collection::vec(1u32..=20, 1..=8),
        cycles in 1usize..=3,
    ) {
        let s = SmoothWeighted::new(targets(&weights), HealthPolicy::default());
        let total: u32 = weights.iter().sum();
        for _ in 0..cycles {
            let picks: Vec<usize> = (0..total).map(|_| s.pick().unwrap()).collect();
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(picks.iter().filter(|&&p| p == i).count(), w as usize);
            }
            // Smoothness. nginx's sequences themselves give a heavy target two picks in a row
            // even below half of the total weight (13,13,16 does), so the property held is:
            // only a target of the largest weight ever repeats, and every prefix of the cycle
            // stays within two picks of each target's exact share.
            let heaviest = *weights.iter().max().unwrap();
            for pair in picks.windows(2) {
                prop_assert!(
                    pair[0] != pair[1] || weights[pair[0]] == heaviest,
                    "{:?} on {:?}", picks, weights
                );
            }
            let mut counts = vec![0f64; weights.len()];
            for (k, &p) in picks.iter().enumerate() {
                counts[p] += 1.0;
                for (i, &w) in weights.iter().enumerate() {
                    let share = (k + 1) as f64 * f64::from(w) / f64::from(total);
                    prop_assert!((counts[i] - share).abs() < 2.0, "{:?} on {:?}", picks, weights);
                }
            }
        }
    }

    #[test]
    fn weighted_ticket_cycle_gives_each_its_reduced_weight(
        weights in proptest::collection::vec(1u32..=20, 1..=8),
    ) {
        let w = WeightedTicket::new(targets(&weights), HealthPolicy::default());
        let g = weights.iter().copied().fold(0, gcd);
        let cycle: u32 = weights.iter().map(|x| x / g).sum();
        let picks: Vec<usize> = (0..cycle).map(|_| w.pick().unwrap()).collect();
        for (i, &weight) in weights.iter().enumerate() {
            prop_assert_eq!(picks.iter().filter(|&&p| p == i).count(), (weight / g) as usize);
        }
    }

    #[test]
    fn round_robin_counts_are_exact_across_threads(
        n in 1usize..=9,
        threads in 1usize..=4,
        rounds in 1usize..=200,
    ) {
        let rr = Arc::new(RoundRobin::new(targets(&vec![1; n]), HealthPolicy::default()));
        let per_thread = n * rounds;
        let counts: Vec<Vec<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let rr = Arc::clone(&rr);
                    s.spawn(move || {
                        let mut counts = vec![0; n];
                        for _ in 0..per_thread {
                            counts[rr.pick().unwrap()] += 1;
                        }
                        counts
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for i in 0..n {
            let total: usize = counts.iter().map(|c| c[i]).sum();
            prop_assert_eq!(total, threads * rounds);
        }
    }

    #[test]
    fn a_down_target_is_never_picked_while_another_is_up(
        weights in proptest::collection::vec(1u32..=5, 2..=10),
        down in proptest::collection::vec(any::<bool>(), 10),
        picks in 1usize..=60,
    ) {
        let mut down = down[..weights.len()].to_vec();
        let up = weights.len() - 1;
        down[up] = false; // at least one target is up
        for strategy in every_strategy(&weights, HealthPolicy::default()) {
            for (i, &d) in down.iter().enumerate() {
                if d {
                    strategy.targets()[i].state().mark_down();
                }
            }
            for _ in 0..picks {
                let i = strategy.pick().unwrap();
                prop_assert!(!down[i], "picked down target {} of {:?}", i, down);
            }
        }
    }

    #[test]
    fn attempts_never_repeat_a_target(
        weights in proptest::collection::vec(1u32..=5, 1..=24),
        down in proptest::collection::vec(any::<bool>(), 24),
        panic_mode in any::<bool>(),
    ) {
        let policy = HealthPolicy::default()
            .with_all_down(if panic_mode { AllDown::Panic } else { AllDown::FailFast });
        let n = weights.len();
        let down = &down[..n];
        let up = down.iter().filter(|d| !**d).count();
        for strategy in every_strategy(&weights, policy.clone()) {
            for (i, &d) in down.iter().enumerate() {
                if d {
                    strategy.targets()[i].state().mark_down();
                }
            }
            let mut attempts = Attempts::new();
            let mut seen = HashSet::new();
            while let Some(i) = strategy.next_attempt(&mut attempts) {
                prop_assert!(seen.insert(i), "target {} yielded twice", i);
            }
            let reachable = if up > 0 { up } else if panic_mode { n } else { 0 };
            prop_assert_eq!(seen.len(), reachable.min(MAX_ATTEMPTS));
            prop_assert_eq!(attempts.len(), seen.len());
        }
    }

    #[test]
    fn a_ramping_target_never_gets_more_picks_than_its_ramp_allows(
        n in 2usize..=8,
        slow_start_s in 1u64..=100,
        elapsed_permille in 0u64..=1200,
        picks in 1usize..=2000,
        ticket in any::<bool>(),
    ) {
        let clock = Arc::new(ManualClock::new());
        let policy = HealthPolicy::default()
            .with_slow_start(Duration::from_secs(slow_start_s))
            .with_clock(Arc::clone(&clock));
        let weights = vec![1; n];
        let strategy: Box<dyn Strategy<usize>> = if ticket {
            Box::new(WeightedTicket::new(targets(&weights), policy.clone()))
        } else {
            Box::new(RoundRobin::new(targets(&weights), policy.clone()))
        };
        // Target 0 fails, serves its penalty, and comes back: its ramp starts there.
        strategy.report(0, Outcome::Failure);
        clock.advance(policy.fail_timeout + Duration::from_millis(1));
        prop_assert!(strategy.targets()[0].state().is_available(&policy));
        let elapsed = Duration::from_millis(slow_start_s * elapsed_permille);
        clock.advance(elapsed);
        let ramp = (elapsed.as_secs_f64() / slow_start_s as f64).clamp(0.1, 1.0);
        let got = (0..picks).filter(|_| strategy.pick() == Some(0)).count();
        // Offered once per round of n picks; let through at most its share of the offers.
        let offers = picks / n + 1;
        let allowed = (offers as f64 * ramp).floor() as usize + 1;
        prop_assert!(got <= allowed, "{} picks, ramp {:.3}, {} offers: at most {}", got, ramp, offers, allowed);
        // And it is never starved: at least its share, less one.
        prop_assert!(got + 1 >= ((picks / n) as f64 * ramp * 0.99) as usize, "{} picks at ramp {}", got, ramp);
    }
}

/// Sticky keys: `n` distinct byte strings.
fn keys(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("user-{i}").into_bytes()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Per-request shares: over N random draws each entry's share is within 3 points of its
    /// weight's share (N = 20,000: the binomial standard deviation is at most 0.36 points, so
    /// 3 points is over 8 of them).
    #[test]
    fn split_shares_follow_the_weights(weights in prop::collection::vec(0u32..100, 1..6), seed in any::<u64>()) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let names: Vec<String> = (0..weights.len()).map(|i| format!("u{i}")).collect();
        let split = balancer::Split::new(names.iter().map(String::as_str).zip(weights.iter().copied())).unwrap();
        let n = 20_000u32;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..n {
            counts[split.pick(rng.u64(..))] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = f64::from(counts[i]) / f64::from(n);
            prop_assert!((want - got).abs() < 0.03, "entry {i}: weight share {want:.3}, got {got:.3}");
            if w == 0 { prop_assert_eq!(counts[i], 0); }
        }
    }

    /// Sticky shares follow the weights too (4,000 keys, within 5 points), and adding an entry
    /// moves only keys to the new entry: every other key stays where it was, and the share
    /// that moves is about the new entry's share (within 5 points).
    #[test]
    fn sticky_split_spreads_by_weight_and_adding_an_entry_moves_few_keys(
        weights in prop::collection::vec(1u32..100, 1..6),
        added in 1u32..100,
    ) {
        let names: Vec<String> = (0..=weights.len()).map(|i| format!("backend-{i}")).collect();
        let before = balancer::Split::new(names.iter().map(String::as_str).zip(weights.iter().copied())).unwrap();
        let mut more = weights.clone();
        more.push(added);
        let after = balancer::Split::new(names.iter().map(String::as_str).zip(more.iter().copied())).unwrap();
        let keys = keys(4_000);
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u32; weights.len()];
        let mut moved = 0u32;
        for k in &keys {
            let a = before.pick_sticky(k);
            prop_assert_eq!(a, before.pick_sticky(k));
            counts[a] += 1;
            let b = after.pick_sticky(k);
            if b != a {
                prop_assert_eq!(b, weights.len(), "a key moved between old entries");
                moved += 1;
            }
        }
        for (i, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = f64::from(counts[i]) / keys.len() as f64;
            prop_assert!((want - got).abs() < 0.05, "entry {i}: share {want:.3}, got {got:.3}");
        }
        let new_share = f64::from(added) / f64::from(total + added);
        let moved_share = f64::from(moved) / keys.len() as f64;
        prop_assert!((new_share - moved_share).abs() < 0.05, "moved {moved_share:.3}, new entry's share {new_share:.3}");
    }
}
