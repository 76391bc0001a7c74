//! Passive health, manual marks, all-down behaviour, in-flight guards and set replacement,
//! driven by a manual clock.
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use balancer::{
    Algorithm, AllDown, Attempts, Balancer, HealthPolicy, LeastRequest, ManualClock, Outcome,
    RoundRobin, SmoothWeighted, Strategy, Target, TargetState,
};

fn policy(clock: &Arc<ManualClock>, max_fails: u32) -> HealthPolicy {
    HealthPolicy::default()
        .with_max_fails(max_fails)
        .with_fail_timeout(Duration::from_secs(10))
        .with_clock(Arc::clone(clock))
}

fn rr(n: usize, policy: HealthPolicy) -> RoundRobin<usize> {
    RoundRobin::new((0..n).map(|i| Target::new(i, 1)).collect(), policy)
}

fn picks(s: &dyn Strategy<usize>, n: usize) -> Vec<usize> {
    (0..n).map(|_| s.pick().unwrap()).collect()
}

#[test]
fn one_failure_takes_a_target_out_for_fail_timeout_by_default() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 1));
    s.report(0, Outcome::Failure);
    assert_eq!(picks(&s, 4), [1, 1, 1, 1]);
    clock.advance(Duration::from_millis(9_999));
    assert!(!picks(&s, 4).contains(&0));
    clock.advance(Duration::from_millis(2));
    assert!(picks(&s, 4).contains(&0), "back after fail_timeout");
    assert_eq!(s.targets()[0].state().failures(), 1);
}

#[test]
fn max_fails_counts_within_the_window_only() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 3));
    s.report(0, Outcome::Failure);
    s.report(0, Outcome::Failure);
    assert!(picks(&s, 4).contains(&0), "two failures of three");
    // The window moves on: the next failure starts a new count.
    clock.advance(Duration::from_secs(11));
    s.report(0, Outcome::Failure);
    assert!(picks(&s, 4).contains(&0));
    s.report(0, Outcome::Failure);
    s.report(0, Outcome::Failure);
    assert!(!picks(&s, 4).contains(&0), "three within the window");
}

#[test]
fn success_resets_the_failure_count() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 2));
    s.report(0, Outcome::Failure);
    s.report(0, Outcome::Success);
    s.report(0, Outcome::Failure);
    assert!(picks(&s, 4).contains(&0));
    assert_eq!(s.targets()[0].state().successes(), 1);
}

#[test]
fn max_fails_zero_disables_passive_health() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 0));
    for _ in 0..10 {
        s.report(0, Outcome::Failure);
    }
    assert!(picks(&s, 4).contains(&0));
}

#[test]
fn manual_marks_win_over_passive_recovery() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(3, policy(&clock, 1));
    let state = s.targets()[1].state();
    state.mark_down();
    assert!(state.is_marked_down());
    s.report(1, Outcome::Failure); // a passive failure does not clear the manual mark
    clock.advance(Duration::from_secs(60));
    assert!(!picks(&s, 6).contains(&1));
    state.mark_up();
    assert!(picks(&s, 6).contains(&1));
}

#[test]
fn all_down_fails_fast_or_panics() {
    let clock = Arc::new(ManualClock::new());
    let fast = rr(2, policy(&clock, 1).with_all_down(AllDown::FailFast));
    let panic = rr(2, policy(&clock, 1).with_all_down(AllDown::Panic));
    for s in [&fast, &panic] {
        s.targets()[0].state().mark_down();
        s.report(1, Outcome::Failure);
    }
    assert_eq!(fast.pick(), None);
    let mut attempts = Attempts::new();
    assert_eq!(fast.next_attempt(&mut attempts), None);
    let got = picks(&panic, 4);
    assert!(
        got.contains(&0) && got.contains(&1),
        "panic mode uses every target: {got:?}"
    );
}

#[test]
fn smooth_weighted_lowers_a_failing_weight_and_recovers_like_nginx() {
    let clock = Arc::new(ManualClock::new());
    // max_fails 2: one failure keeps `a` in rotation, its effective weight drops by 20 / 2
    // and climbs back by one per pick, as nginx's ngx_http_upstream_get_peer does.
    let s = SmoothWeighted::new(
        vec![Target::new(0usize, 20), Target::new(1, 20)],
        policy(&clock, 2),
    );
    assert_eq!(picks(&s, 8), [0, 1, 0, 1, 0, 1, 0, 1]);
    s.report(0, Outcome::Failure);
    let after = picks(&s, 20);
    // The sequence nginx gives for effective weights 10 and 20 from a zero state.
    assert_eq!(&after[..4], [1, 0, 1, 1]);
    assert_eq!(after.iter().filter(|&&p| p == 0).count(), 9, "{after:?}");
    // Back at full weight: even shares again.
    let later = picks(&s, 20);
    assert_eq!(later.iter().filter(|&&p| p == 0).count(), 10, "{later:?}");
    // One failure with max_fails 1 takes a target out entirely, then it ramps up from zero.
    let s = SmoothWeighted::new(
        vec![Target::new(0usize, 3), Target::new(1, 3)],
        policy(&clock, 1),
    );
    s.report(0, Outcome::Failure);
    assert!(!picks(&s, 6).contains(&0));
    clock.advance(Duration::from_secs(11));
    let ramp = picks(&s, 6);
    // Its effective weight starts from 0: the first picks still go to `b`.
    assert_eq!(&ramp[..2], [1, 1], "{ramp:?}");
    let later = picks(&s, 6);
    assert_eq!(later.iter().filter(|&&p| p == 0).count(), 3, "{later:?}");
}

fn poll_once<F: Future>(fut: F) {
    let mut cx = Context::from_waker(Waker::noop());
    let _ = pin!(fut).poll(&mut cx);
}

#[test]
fn in_flight_guards_end_on_drop_panic_and_cancellation() {
    let state = Arc::new(TargetState::new());
    let a = state.start();
    let b = state.start();
    assert_eq!(state.in_flight(), 2);
    drop(a);
    assert_eq!(state.in_flight(), 1);
    drop(b);

    let in_thread = Arc::clone(&state);
    let result = std::thread::spawn(move || {
        let _guard = in_thread.start();
        panic!("the request's task panics");
    })
    .join();
    assert!(result.is_err());
    assert_eq!(state.in_flight(), 0, "a panic still ends the request");

    // A request future dropped before it finishes (a client that went away).
    let guard = state.start();
    let request = async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    };
    poll_once(request);
    assert_eq!(state.in_flight(), 0, "cancellation ends the request");
}

#[test]
fn least_request_prefers_fewer_in_flight() {
    let lr = LeastRequest::new(
        (0..2).map(|i| Target::new(i, 1)).collect(),
        HealthPolicy::default(),
    );
    let busy: Vec<_> = (0..3).map(|_| lr.targets()[0].state().start()).collect();
    assert!(picks(&lr, 20).iter().all(|&p| p == 1));
    drop(busy);
    let _other = lr.targets()[1].state().start();
    assert!(picks(&lr, 20).iter().all(|&p| p == 0));
}

#[test]
fn replacing_the_set_keeps_the_state_of_targets_that_stay() {
    let clock = Arc::new(ManualClock::new());
    let lb = Balancer::new(
        Algorithm::RoundRobin,
        [("a", 1), ("b", 1)],
        policy(&clock, 1),
    )
    .unwrap();
    let a = lb.targets()[0].state().clone();
    let guard = a.start();
    lb.targets()[1].state().mark_down();
    lb.replace([("b", 1), ("c", 1), ("a", 2)]).unwrap();

    let now = lb.targets();
    let names: Vec<_> = now.iter().map(|t| *t.value()).collect();
    assert_eq!(names, ["b", "c", "a"]);
    assert!(Arc::ptr_eq(now[2].state(), &a), "a kept its state");
    assert_eq!(now[2].state().in_flight(), 1);
    assert_eq!(now[2].weight(), 2);
    assert!(now[0].state().is_marked_down(), "b is still down");
    assert_eq!(now[1].state().in_flight(), 0);
    let got: Vec<_> = (0..6).map(|_| *lb.pick().unwrap().value()).collect();
    assert!(!got.contains(&"b"));
    assert!(!a.is_retired());
    let c = now[1].state().clone();
    lb.replace([("a", 1), ("b", 1)]).unwrap();
    assert!(c.is_retired(), "c left the set");
    assert!(!a.is_retired());
    drop(guard);
    assert_eq!(a.in_flight(), 0);
    assert!(matches!(
        lb.replace([("x", 0)]),
        Err(balancer::BuildError::ZeroWeight(0))
    ));
}

#[test]
fn a_report_after_replacement_still_reaches_the_target() {
    let clock = Arc::new(ManualClock::new());
    let lb = Balancer::new(
        Algorithm::SmoothWeighted,
        [("a", 1), ("b", 1)],
        policy(&clock, 1),
    )
    .unwrap();
    let picked = lb.pick().unwrap();
    lb.replace([("b", 1), ("a", 1)]).unwrap();
    lb.report(&picked, Outcome::Failure);
    let target = lb
        .targets()
        .into_iter()
        .find(|t| t.value() == picked.value())
        .unwrap();
    assert_eq!(target.state().failures(), 1);
    assert!(!(0..4).any(|_| lb.pick().unwrap().value() == picked.value()));
}

#[test]
fn the_only_target_is_never_taken_out_by_passive_health() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(1, policy(&clock, 1));
    for _ in 0..5 {
        s.report(0, Outcome::Failure);
    }
    assert_eq!(s.targets()[0].state().failures(), 5);
    assert_eq!(picks(&s, 3), [0, 0, 0]);
    let mut attempts = Attempts::new();
    assert_eq!(s.next_attempt(&mut attempts), Some(0));
}

#[test]
fn a_failed_body_is_counted_but_alone_does_not_take_a_target_out() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 1));
    let state = s.targets()[0].state();
    // Failures with complete bodies between them: never out.
    for _ in 0..10 {
        s.report(0, Outcome::BodyFailure);
        state.body_completed();
    }
    assert_eq!((state.failures(), state.body_failures()), (10, 10));
    assert!(picks(&s, 4).contains(&0));
    // A run of them in a row counts as one failure.
    for _ in 1..balancer::BODY_FAILURES_IN_A_ROW {
        s.report(0, Outcome::BodyFailure);
    }
    assert!(picks(&s, 4).contains(&0));
    s.report(0, Outcome::BodyFailure);
    assert!(
        !picks(&s, 4).contains(&0),
        "a target that always cuts its bodies goes out"
    );
}

#[test]
fn when_every_target_is_out_their_passive_state_is_reset_and_the_request_tried() {
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 1));
    // The blackout sequence: one target out, then one bad exchange with the other.
    s.report(1, Outcome::Failure);
    s.report(0, Outcome::Failure);
    assert!(!s.targets()[0].state().is_available(s.policy()));
    // A request still gets a target, and every target once before giving up.
    let mut attempts = Attempts::new();
    let first = s
        .next_attempt(&mut attempts)
        .expect("a target despite all down");
    s.report(first, Outcome::Failure);
    let second = s.next_attempt(&mut attempts).expect("the other one too");
    assert_ne!(first, second);
    assert_eq!(s.next_attempt(&mut attempts), None, "each target once");
    // Targets marked down by hand (or by active checks) stay out even then.
    let s = rr(2, policy(&clock, 1));
    s.targets()[0].state().mark_down();
    s.report(1, Outcome::Failure);
    assert_eq!(s.pick(), Some(1), "the passive penalty is forgiven");
    s.targets()[1].state().mark_down();
    assert_eq!(s.pick(), None, "manual marks are not");
}

fn check(ok: bool) -> balancer::CheckResult {
    balancer::CheckResult {
        ok,
        detail: if ok { "200" } else { "refused" }.into(),
        at_ms: 0,
    }
}

#[test]
fn active_checks_take_a_target_out_after_fall_and_back_after_rise() {
    use balancer::CheckTransition::{CameUp, None as Same, WentDown};
    let clock = Arc::new(ManualClock::new());
    let s = rr(2, policy(&clock, 1));
    let p = s.policy().clone();
    let state = s.targets()[0].state();
    assert_eq!(state.report_check(&p, check(false), 2, 3), Same);
    assert_eq!(
        state.report_check(&p, check(true), 2, 3),
        Same,
        "streak broken"
    );
    assert_eq!(state.report_check(&p, check(false), 2, 3), Same);
    assert_eq!(state.report_check(&p, check(false), 2, 3), Same);
    assert_eq!(state.report_check(&p, check(false), 2, 3), WentDown);
    assert!(state.is_check_down());
    assert!(!picks(&s, 6).contains(&0));
    // Passive health cannot bring it back: only rise passing checks can.
    clock.advance(Duration::from_secs(60));
    assert!(!picks(&s, 6).contains(&0));
    assert_eq!(state.report_check(&p, check(true), 2, 3), Same);
    assert_eq!(state.report_check(&p, check(true), 2, 3), CameUp);
    assert!(picks(&s, 6).contains(&0));
    assert_eq!(state.last_check().map(|c| c.ok), Some(true));
}

#[test]
fn a_target_coming_back_ramps_up_over_slow_start() {
    let clock = Arc::new(ManualClock::new());
    let p = policy(&clock, 1).with_slow_start(Duration::from_secs(10));
    let s = rr(2, p);
    s.report(0, Outcome::Failure);
    clock.advance(Duration::from_secs(11)); // the penalty is over: ramping from 10 %
    let share = |n: usize| picks(&s, n).iter().filter(|&&i| i == 0).count();
    let early = share(1000);
    assert!((40..=60).contains(&early), "{early} of 1000 at the start");
    clock.advance(Duration::from_secs(5)); // half way
    let half = share(1000);
    assert!((230..=270).contains(&half), "{half} of 1000 half way");
    clock.advance(Duration::from_secs(5)); // done: an equal share
    assert_eq!(share(1000), 500);
    assert_eq!(s.targets()[0].state().ramp(s.policy()), None);
}

#[test]
fn targets_added_at_run_time_ramp_up_and_the_first_ones_do_not() {
    let clock = Arc::new(ManualClock::new());
    let p = policy(&clock, 1).with_slow_start(Duration::from_secs(10));
    let lb = Balancer::new(Algorithm::RoundRobin, [("a", 1), ("b", 1)], p).unwrap();
    assert!(
        lb.targets()
            .iter()
            .all(|t| t.state().ramp(lb.policy()).is_none())
    );
    lb.replace([("a", 1), ("b", 1), ("c", 1)]).unwrap();
    let c = lb.targets()[2].state().clone();
    assert!(c.ramp(lb.policy()).is_some_and(|r| r < 0.2));
    let got = (0..3000)
        .filter(|_| *lb.pick().unwrap().value() == "c")
        .count();
    assert!(got < 200, "c got {got} of 3000 while cold");
}
