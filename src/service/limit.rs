//! The adaptive admission limit: how many faces may be in flight at once
//! so that admitted requests meet a latency target while the model stays
//! busy. A pure decision (`decide`), applied by the admission every
//! interval from what it saw; tested without threads or clocks.
//!
//! **What it measures.** Each request's *sojourn*: from the moment it is
//! admitted to the end of its last face's model run (preparation, waiting
//! for a batch, and the run: everything the number of faces in flight
//! lengthens), counted once for each of its faces. What a client waits for
//! is its last face: a request of two faces is two samples of the slower.
//! Per interval: the sojourns' 99th percentile and minimum, the faces that
//! finished, the most faces in flight, and whether the limit turned anyone
//! away (refused, or kept waiting in line).
//!
//! **The rule** (a target-tracking controller, from Little's law):
//! - The goal is `target × headroom` (the rest of the target is for what a
//!   request does after its faces: comparing, searching, answering).
//! - A sojourn p99 over the goal lowers the limit at once, in proportion:
//!   `limit × max(½, goal / p99)` (a 3× slower model shows in one
//!   interval).
//! - While the limit is what turns requests away, and the p99 is within the
//!   goal, both the interval's and the recent sojourns' (the last 256 of
//!   the last 2 s), the limit moves up toward `rate × goal × shape`, by
//!   half the distance each interval, at least one face. `rate × goal`
//!   faces in flight finish in the goal *on average* (Little's law);
//!   `shape`, the recent sojourns' mean over their p99, turns that into the
//!   p99: a camera frame's sojourns spread wider than a chip's, and a limit
//!   at `rate × goal` would put their mean, not their p99, at the goal.
//! - An interval of a slow service holds few sojourns (16 at least), and
//!   the p99 of 16 is their largest, a 94th percentile: enough to cut on,
//!   too few to grow on. The recent ones are the p99 growth must also meet.
//! - Otherwise it holds. It never grows while nobody is turned away, so it
//!   does not creep upward under modest load (Gradient2's known trap: its
//!   added headroom raises the limit whenever the gradient is flat), and it
//!   needs no probe that pins the concurrency low to find the floor
//!   (Envoy's min-RTT probe and the 503s it causes): the floor is the
//!   smallest sojourn seen, which under load is what a request costs alone.
//! - A p99 over the goal while the floor itself is over it (one request
//!   alone takes longer than the goal: the target cannot be met at any
//!   limit) cuts nothing: fewer in flight would lose throughput and gain
//!   no latency.
//! - A request weighs at most [`MOST_COPIES`] samples (its faces count in
//!   the rate all the same): a review of 64 faces, admitted alone, must
//!   not decide an interval by itself.
//! - It stays between `min` (a face per inference thread) and `max`
//!   (`--queue`, the hard cap), and starts at `start` (the service's: a
//!   batch per inference thread). Two batches per inference thread, as it
//!   once started, kept 1080p frames 400 ms in flight before the first
//!   decision; starting at `min` refused requests of a light load before
//!   the limit had grown (two clients of two faces). The batcher needs a
//!   queue to form batches, and the target bounds that queue: the limit
//!   stays under a batch per inference thread only where a batch per
//!   thread queues past the goal, where a face's own preparation is long
//!   (a camera frame through the detector); smaller batches are the price
//!   of the target there.
//!
//! **Expected wait.** With the throughput measured at saturation, a request
//! of `n` faces admitted now finishes after about `(in use + n) / rate`;
//! one whose own deadline is shorter is refused at once instead of being
//! admitted to time out, and a refusal's `Retry-After` is the time the
//! excess takes to drain at that rate.

use std::time::Duration;

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitPolicy {
    /// The latency admitted requests should meet at p99.
    pub target: Duration,
    /// The share of the target a request's sojourn may take.
    pub headroom: f64,
    /// The smallest limit (faces).
    pub min: usize,
    /// The largest limit (faces): the hard cap.
    pub max: usize,
    /// Where the limit starts (faces), before any rate is measured.
    pub start: usize,
    /// How often the limit is decided.
    pub interval: Duration,
    /// Sojourns an interval needs to decide on (fewer: it waits longer).
    pub min_samples: usize,
}

impl LimitPolicy {
    /// A target (80 % of it for the faces), decided every 100 ms on at
    /// least 16 faces, between `min` and `max`, starting at `min`.
    pub fn new(target: Duration, min: usize, max: usize) -> Self {
        let max = max.max(1);
        Self {
            target,
            headroom: 0.8,
            min: min.clamp(1, max),
            max,
            start: min,
            interval: Duration::from_millis(100),
            min_samples: 16,
        }
    }

    /// The sojourn goal: `target × headroom`.
    pub fn goal(&self) -> Duration {
        self.target.mul_f64(self.headroom.clamp(0.05, 1.0))
    }

    /// The same, starting at `start` faces.
    pub fn starting_at(self, start: usize) -> Self {
        Self { start, ..self }
    }

    /// Where the limit starts, within the bounds: what the first burst of
    /// an overload is let in before the first decision; it grows from
    /// there once the limit turns requests away, and falls if that queues
    /// past the goal.
    pub fn initial(&self) -> usize {
        self.start.clamp(self.min, self.max)
    }
}

/// What the admission saw in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// How long the interval was.
    pub elapsed: Duration,
    /// Faces whose work ended in it.
    pub completed: u64,
    /// Their sojourns' 99th percentile.
    pub p99: Option<Duration>,
    /// Their smallest sojourn.
    pub min: Option<Duration>,
    /// The recent sojourns (this interval's among them: the last
    /// [`RECENT`] of the last [`RECENT_FOR`]): their p99 and mean.
    pub recent: Sojourns,
    /// The most faces in flight at once.
    pub peak_in_use: usize,
    /// Whether the limit turned a request away (refused, or kept in line).
    pub limited: bool,
}

/// The controller's state from one interval to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitState {
    /// The limit (faces), fractional between decisions.
    pub limit: f64,
    /// Faces finished per second while the limit was what held requests
    /// back (the capacity), smoothed; `None` until measured.
    pub rate: Option<f64>,
    /// The smallest sojourn seen (what a request costs alone), drifting up
    /// slowly so that a model that became slower is noticed.
    pub floor: Option<Duration>,
    /// The last interval's sojourn p99.
    pub p99: Option<Duration>,
    /// The recent sojourns' mean over their p99 (0.2 to 1); `None` until
    /// measured.
    pub shape: Option<f64>,
}

impl LimitState {
    /// The starting state of `policy`.
    pub fn new(policy: &LimitPolicy) -> Self {
        Self {
            limit: policy.initial() as f64,
            rate: None,
            floor: None,
            p99: None,
            shape: None,
        }
    }

    /// The limit in whole faces.
    pub fn faces(&self) -> usize {
        self.limit.round().max(1.0) as usize
    }

    /// How long `faces` more would take to finish, at the measured rate.
    pub fn expected(&self, in_use: usize, faces: usize) -> Option<Duration> {
        let rate = self.rate.filter(|r| *r > 0.0)?;
        let s = (in_use + faces) as f64 / rate;
        Some(Duration::from_secs_f64(s.min(3600.0)) + self.floor.unwrap_or_default())
    }
}

/// The next state, from the last one and an interval's observation.
pub fn decide(policy: &LimitPolicy, state: &LimitState, obs: &Observation) -> LimitState {
    let mut next = *state;
    if obs.completed == 0 {
        return next;
    }
    next.p99 = obs.p99.or(state.p99);
    // The floor: the smallest sojourn, drifting up 1 % an interval.
    next.floor = match (state.floor, obs.min) {
        (Some(f), Some(m)) => Some(m.min(f.mul_f64(1.01))),
        (f, m) => m.or(f),
    };
    if let (Some(mean), Some(p99)) = (obs.recent.mean, obs.recent.p99) {
        next.shape = Some((mean.as_secs_f64() / p99.as_secs_f64().max(1e-9)).clamp(0.2, 1.0));
    }
    let goal = policy.goal();
    let secs = obs.elapsed.as_secs_f64();
    if obs.limited && secs > 0.0 {
        let r = obs.completed as f64 / secs;
        next.rate = Some(match state.rate {
            Some(old) => 0.7 * old + 0.3 * r,
            None => r,
        });
    }
    match obs.p99 {
        Some(p) if p > goal && next.floor.is_none_or(|f| f < goal) => {
            let cut = (goal.as_secs_f64() / p.as_secs_f64()).max(0.5);
            next.limit = (state.limit * cut).min(state.limit - 1.0);
        }
        Some(_) if obs.limited && obs.recent.p99.is_none_or(|p| p <= goal) => {
            if let Some(rate) = next.rate {
                let little = rate * goal.as_secs_f64() * next.shape.unwrap_or(1.0);
                if little > state.limit {
                    next.limit = state.limit + ((little - state.limit) / 2.0).max(1.0);
                }
            }
        }
        _ => {}
    }
    next.limit = next.limit.clamp(policy.min as f64, policy.max as f64);
    next
}

/// Sojourns, summed up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sojourns {
    /// The 99th percentile.
    pub p99: Option<Duration>,
    /// The smallest.
    pub min: Option<Duration>,
    /// The mean.
    pub mean: Option<Duration>,
}

/// The 99th percentile of `samples` (sorted in place), the smallest and the
/// mean.
pub fn summarise(samples: &mut [Duration]) -> Sojourns {
    if samples.is_empty() {
        return Sojourns::default();
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * 0.99).ceil() as usize).clamp(1, samples.len()) - 1;
    let sum: f64 = samples.iter().map(Duration::as_secs_f64).sum();
    Sojourns {
        p99: Some(samples[i]),
        min: Some(samples[0]),
        mean: Some(Duration::from_secs_f64(sum / samples.len() as f64)),
    }
}

/// The controller as the admission runs it: the interval's samples and
/// counts, and the decision when the interval is over.
#[derive(Debug)]
pub(crate) struct Control {
    pub policy: LimitPolicy,
    pub state: LimitState,
    window: Vec<std::time::Duration>,
    /// The recent sojourns and when each ended, oldest first.
    recent: std::collections::VecDeque<(std::time::Instant, Duration)>,
    completed: u64,
    limited: bool,
    peak: usize,
    started: std::time::Instant,
    /// Faces turned away because of the limit, and for their deadline.
    pub refused_deadline: u64,
}

/// Sojourns kept per interval at most (more are counted, not kept).
const WINDOW: usize = 8192;

/// Samples one request weighs at most.
pub const MOST_COPIES: usize = 4;

/// The recent sojourns kept across intervals, whose p99 growth must meet:
/// at most this many...
pub const RECENT: usize = 256;

/// ...of at most this long ago.
pub const RECENT_FOR: Duration = Duration::from_secs(2);

impl Control {
    pub fn new(policy: LimitPolicy) -> Self {
        Self {
            state: LimitState::new(&policy),
            policy,
            window: Vec::new(),
            recent: std::collections::VecDeque::with_capacity(RECENT),
            completed: 0,
            limited: false,
            peak: 0,
            started: std::time::Instant::now(),
            refused_deadline: 0,
        }
    }

    /// `faces` finished at `now`, `sojourn` after they were admitted.
    pub fn finished(&mut self, faces: usize, sojourn: Duration, now: std::time::Instant) {
        self.completed += faces as u64;
        let copies = faces.min(MOST_COPIES);
        for _ in 0..copies.min(WINDOW - self.window.len().min(WINDOW)) {
            self.window.push(sojourn);
        }
        for _ in 0..copies {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((now, sojourn));
        }
    }

    /// The sojourns of this interval so far, and the faces finished.
    #[cfg(test)]
    pub fn window(&self) -> (&[Duration], u64) {
        (&self.window, self.completed)
    }

    /// Whether the limit turned a request away this interval.
    #[cfg(test)]
    pub fn was_limited(&self) -> bool {
        self.limited
    }

    /// The limit turned a request away.
    pub fn limited(&mut self) {
        self.limited = true;
    }

    /// Faces in flight now.
    pub fn in_use(&mut self, faces: usize) {
        self.peak = self.peak.max(faces);
    }

    /// At the end of an interval with enough samples: the decision's new
    /// limit.
    pub fn tick(&mut self, now: std::time::Instant) -> Option<usize> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < self.policy.interval || self.window.len() < self.policy.min_samples {
            return None;
        }
        let Sojourns { p99, min, .. } = summarise(&mut self.window);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RECENT_FOR)
        {
            self.recent.pop_front();
        }
        let mut recent: Vec<Duration> = self.recent.iter().map(|(_, s)| *s).collect();
        let obs = Observation {
            elapsed,
            completed: self.completed,
            p99,
            min,
            recent: summarise(&mut recent),
            peak_in_use: self.peak,
            limited: self.limited,
        };
        self.state = decide(&self.policy, &self.state, &obs);
        self.window.clear();
        (self.completed, self.limited, self.peak, self.started) = (0, false, 0, now);
        Some(self.state.faces())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> LimitPolicy {
        LimitPolicy::new(ms(300), 8, 512)
    }

    fn obs(completed: u64, p99: u64, limited: bool) -> Observation {
        Observation {
            elapsed: ms(100),
            completed,
            p99: Some(ms(p99)),
            min: Some(ms(20)),
            recent: Sojourns {
                p99: Some(ms(p99)),
                min: Some(ms(20)),
                mean: Some(ms(p99)),
            },
            peak_in_use: 0,
            limited,
        }
    }

    #[test]
    fn over_the_goal_it_falls_in_proportion_and_at_most_by_half() {
        let p = policy();
        let s = LimitState {
            limit: 100.0,
            ..LimitState::new(&p)
        };
        // Goal 240 ms; 480 ms is twice it: half.
        assert_eq!(decide(&p, &s, &obs(10, 480, true)).faces(), 50);
        // 2.4 s: ten times, but at most half.
        assert_eq!(decide(&p, &s, &obs(10, 2400, true)).faces(), 50);
        // Just over: at least one face less.
        assert_eq!(decide(&p, &s, &obs(10, 241, true)).faces(), 99);
        // Never under the floor of the batches.
        let low = LimitState { limit: 9.0, ..s };
        assert_eq!(decide(&p, &low, &obs(10, 2400, true)).faces(), 8);
    }

    #[test]
    fn it_grows_toward_little_only_while_it_turns_requests_away() {
        let p = policy();
        let s = LimitState {
            limit: 20.0,
            rate: Some(200.0),
            ..LimitState::new(&p)
        };
        // 200 faces/s × 240 ms = 48: half the way from 20 (the rate is
        // measured again: 20 in 100 ms keeps it at 200).
        let up = decide(&p, &s, &obs(20, 100, true));
        assert_eq!(up.faces(), 34);
        // Not limited: it holds, however low the latency (no creep).
        assert_eq!(decide(&p, &s, &obs(5, 30, false)).faces(), 20);
        // Nothing finished: nothing learned.
        assert_eq!(decide(&p, &s, &obs(0, 30, true)), s);
        // Capped.
        let big = LimitState {
            limit: 500.0,
            rate: Some(10_000.0),
            ..s
        };
        assert_eq!(decide(&p, &big, &obs(1000, 100, true)).faces(), 512);
    }

    #[test]
    fn a_goal_no_request_meets_alone_cuts_nothing() {
        let p = policy();
        let s = LimitState {
            limit: 20.0,
            floor: Some(ms(300)),
            ..LimitState::new(&p)
        };
        let mut o = obs(20, 600, true);
        o.min = Some(ms(300));
        assert_eq!(decide(&p, &s, &o).faces(), 20);
        // Reachable: cut.
        o.min = Some(ms(100));
        let s = LimitState { floor: None, ..s };
        assert_eq!(decide(&p, &s, &o).faces(), 10);
    }

    #[test]
    fn a_large_request_weighs_a_few_samples_and_all_its_faces() {
        let mut c = Control::new(policy());
        c.finished(64, ms(900), std::time::Instant::now());
        let (window, faces) = c.window();
        assert_eq!((window.len(), faces), (MOST_COPIES, 64));
        // Fewer than an interval's 16: it decides nothing alone.
        assert!(MOST_COPIES < policy().min_samples);
    }

    #[test]
    fn the_floor_is_the_smallest_sojourn_drifting_up() {
        let p = policy();
        let mut s = LimitState::new(&p);
        s = decide(&p, &s, &obs(10, 100, false));
        assert_eq!(s.floor, Some(ms(20)));
        let mut o = obs(10, 100, false);
        o.min = Some(ms(500));
        let s2 = decide(&p, &s, &o);
        assert_eq!(s2.floor, Some(ms(20).mul_f64(1.01)));
    }

    #[test]
    fn expected_wait_from_the_rate() {
        let s = LimitState {
            limit: 10.0,
            rate: Some(100.0),
            floor: Some(ms(30)),
            p99: None,
            shape: None,
        };
        assert_eq!(s.expected(48, 2), Some(ms(530)));
        let unknown = LimitState { rate: None, ..s };
        assert_eq!(unknown.expected(48, 2), None);
    }

    /// A simulated server of `lanes` workers, the `n`th face taking
    /// `service(n)` ms, offered a face every `every` ms for 60 s, under the
    /// admission's controller. Returns, from 20 s on, each decision's limit
    /// and interval p99, every sojourn, and the faces finished.
    fn simulate(
        p: LimitPolicy,
        lanes: usize,
        mut service: impl FnMut(u64) -> u64,
        every: u64,
    ) -> (Vec<(usize, Duration)>, Vec<Duration>, u64) {
        let base = std::time::Instant::now();
        let mut c = Control::new(p);
        let mut queue: std::collections::VecDeque<u64> = Default::default(); // admitted, ms
        let mut busy: Vec<Option<(u64, u64)>> = vec![None; lanes]; // (admitted, done at), ms
        let (mut settled, mut sojourns, mut served, mut n) = (Vec::new(), Vec::new(), 0, 0);
        for t in 0..60_000u64 {
            for lane in busy.iter_mut() {
                if let Some((at, done)) = *lane {
                    if done <= t {
                        c.finished(1, ms(t - at), base + ms(t));
                        if t > 20_000 {
                            sojourns.push(ms(t - at));
                            served += 1;
                        }
                        *lane = None;
                    }
                }
                if lane.is_none() {
                    *lane = queue.pop_front().map(|at| {
                        n += 1;
                        (at, t + service(n))
                    });
                }
            }
            let in_flight = queue.len() + busy.iter().flatten().count();
            if t.is_multiple_of(every) {
                if in_flight < c.state.faces() {
                    queue.push_back(t);
                    c.in_use(in_flight + 1);
                } else {
                    c.limited();
                }
            }
            if c.tick(base + ms(t)).is_some() && t > 20_000 {
                settled.push((c.state.faces(), c.state.p99.unwrap_or_default()));
            }
        }
        (settled, sojourns, served)
    }

    /// Two workers that take 100 ms a face (a camera frame prepared before
    /// its model run), offered twice what they serve, the limit starting at
    /// two batches of 4 per worker: the sojourn p99 of `limit` faces in
    /// flight is `limit / 20` s, so the goal (240 ms) is held only under a
    /// batch per worker (8 faces).
    fn slow_faces(min: usize) -> Vec<(usize, Duration)> {
        let p = LimitPolicy::new(ms(300), min, 512).starting_at(16);
        simulate(p, 2, |_| 100, 25).0
    }

    #[test]
    fn faces_slow_alone_take_the_limit_under_a_batch_per_worker() {
        let goal = policy().goal();
        // With a face per worker as the floor, the goal is held: the limit
        // settles under a batch per worker.
        let held = slow_faces(2);
        assert!(!held.is_empty());
        assert!(
            held.iter().all(|(limit, p99)| *limit < 8 && *p99 <= goal),
            "{held:?}"
        );
        // A batch per worker as the floor (as before) keeps the p99 over it.
        let pinned = slow_faces(8);
        assert!(!pinned.is_empty());
        assert!(
            pinned.iter().all(|(limit, p99)| *limit == 8 && *p99 > goal),
            "{pinned:?}"
        );
    }

    /// Faces whose cost spreads (nine of 30 ms, one of 150 ms: a frame with
    /// a hard face among easy ones), two workers, offered twice what they
    /// serve. Growing toward Little's law alone put the p99 of every
    /// sojourn at 311 ms (the goal is 240); with the shape and the recent
    /// p99, it holds the goal (within 5 %), and the workers stay busy.
    #[test]
    fn spread_costs_hold_the_p99_not_the_mean() {
        let p = LimitPolicy::new(ms(300), 2, 512);
        let cost = |n: u64| if n.is_multiple_of(10) { 150 } else { 30 };
        // Capacity: 2 workers / 42 ms a face on average.
        let capacity = 2.0 * 1000.0 / 42.0;
        let (_, mut sojourns, served) = simulate(p, 2, cost, 10);
        let all = summarise(&mut sojourns);
        let p99 = all.p99.unwrap_or_default();
        assert!(p99 <= p.goal().mul_f64(1.05), "p99 {p99:?} over {:?}", p.goal());
        let rate = served as f64 / 40.0;
        assert!(rate > 0.9 * capacity, "{rate:.1} faces/s of {capacity:.1}");
    }

    /// A simulated server: faces served at a rate that drops 3× mid-run
    /// (and comes back), arrivals at twice the first rate; the admission
    /// runs the controller every interval. The limit follows the rate
    /// within a few intervals, and the sojourn p99 returns under the goal.
    #[test]
    fn it_follows_a_rate_that_changes_three_times() {
        let p = policy();
        let base = std::time::Instant::now();
        let mut c = Control::new(p);
        let dt = 0.001; // 1 ms steps
        let mut queue: std::collections::VecDeque<f64> = Default::default(); // admission times
        let (mut t, mut credit) = (0.0f64, 0.0f64);
        let mut history = Vec::new();
        while t < 30.0 {
            // 600 faces/s, then 200 from 10 s to 20 s, then 600 again.
            let rate = if (10.0..20.0).contains(&t) { 200.0 } else { 600.0 };
            // Arrivals: 1,200 faces/s offered; each admitted if it fits.
            for _ in 0..(1200.0 * dt) as usize {
                if queue.len() < c.state.faces() {
                    queue.push_back(t);
                } else {
                    c.limited();
                }
            }
            c.in_use(queue.len());
            credit += rate * dt;
            while credit >= 1.0 {
                credit -= 1.0;
                if let Some(at) = queue.pop_front() {
                    c.finished(
                        1,
                        Duration::from_secs_f64(t - at + 0.02),
                        base + Duration::from_secs_f64(t),
                    );
                }
            }
            t += dt;
            if c.tick(base + Duration::from_secs_f64(t)).is_some() {
                history.push((t, c.state.faces(), c.state.p99.unwrap_or_default()));
            }
        }
        let at = |from: f64, to: f64| -> Vec<&(f64, usize, Duration)> {
            history
                .iter()
                .filter(|(t, _, _)| (from..to).contains(t))
                .collect()
        };
        let goal = p.goal();
        // Settled at each rate: the limit near rate × goal (within 2×) and
        // the p99 under the goal.
        for (from, to, rate) in [(5.0, 10.0, 600.0), (15.0, 20.0, 200.0), (25.0, 30.0, 600.0)] {
            let ideal = rate * goal.as_secs_f64();
            for (t, limit, p99) in at(from, to) {
                assert!(
                    (*limit as f64) < 2.0 * ideal && (*limit as f64) > ideal / 2.0,
                    "at {t:.1} s: limit {limit}, ideal {ideal:.0}"
                );
                assert!(
                    *p99 <= goal + Duration::from_millis(30),
                    "at {t:.1} s: p99 {p99:?}"
                );
            }
        }
        // The drop is followed within a second.
        let after = at(11.0, 20.0);
        assert!(
            after
                .iter()
                .all(|(_, _, p99)| *p99 <= goal + Duration::from_millis(30)),
            "{after:?}"
        );
    }
}
