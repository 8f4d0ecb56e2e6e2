//! A wait narrated as it happens: a full pipe, FIFO, queue or ring (P6, N7).
//!
//! A writer that finds its channel full waits until the reader makes room. That is the
//! claim (P6: a write to a full pipe blocks) and a learner should see it happen: stop the
//! reader with `kill -STOP` and the writer says, half a second later, that it is blocked
//! and why; resume it with `kill -CONT` and the writer says how long it waited. Short
//! waits, which a fast stream has thousands of per second, are only counted (the report's
//! note), so the terminal is not flooded.
//!
//! ```
//! # use common::stall::Stall;
//! let mut s = Stall::new("write()", "the pipe is full", "the pipe was full", "P6");
//! s.begin();          // write() returned EAGAIN
//! s.tick();           // called while waiting: narrates once the wait passes 0.5 s
//! s.end();            // room again: narrates the wait's length if it was told
//! assert_eq!(s.episodes(), 1);
//! ```

use std::time::{Duration, Instant};

use crate::narrate;

/// Why a writer waits, as said by default: its reader is there and takes nothing.
const TAKING_NOTHING: &str = "the reader is not taking anything";

/// How long a wait lasts before it is narrated.
pub const TELL_AFTER: Duration = Duration::from_millis(500);

/// Counts the waits of one kind and narrates the long ones at their start and end.
#[derive(Debug)]
pub struct Stall {
    /// The call that waits: `write()`, `msgsnd()`, "the ring".
    call: &'static str,
    /// Why, in the present: "the pipe is full".
    now: &'static str,
    /// Why, in the past: "the pipe was full".
    then: &'static str,
    /// The claim it shows.
    claim: &'static str,
    /// Who is not doing what, said when a wait is told ("the reader is not taking
    /// anything").
    reason: &'static str,
    /// Start of the wait in progress.
    since: Option<Instant>,
    /// The wait in progress was narrated.
    told: bool,
    /// Waits so far.
    episodes: u64,
    /// Waits long enough to be narrated.
    long: u64,
    /// The longest wait.
    longest: Duration,
    /// All waits together.
    total: Duration,
}

impl Stall {
    /// A counter for waits of `call` because of `now` ("the pipe is full"; "the pipe was
    /// full" when it is over), showing `claim`.
    pub fn new(
        call: &'static str,
        now: &'static str,
        then: &'static str,
        claim: &'static str,
    ) -> Stall {
        Stall {
            call,
            now,
            then,
            claim,
            reason: TAKING_NOTHING,
            since: None,
            told: false,
            episodes: 0,
            long: 0,
            longest: Duration::ZERO,
            total: Duration::ZERO,
        }
    }

    /// Says `reason` instead of "the reader is not taking anything" when the next wait is
    /// told (a queue that filled before any reader came, say); `None`: back to that.
    pub fn set_reason(&mut self, reason: Option<&'static str>) {
        self.reason = reason.unwrap_or(TAKING_NOTHING);
    }

    /// A wait starts (a second call while one is in progress changes nothing).
    pub fn begin(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.episodes += 1;
        }
    }

    /// Called while waiting: once the wait passes [`TELL_AFTER`], says so (once).
    pub fn tick(&mut self) {
        if let Some(t) = self.since {
            if !self.told && t.elapsed() >= TELL_AFTER {
                self.told = true;
                self.long += 1;
                narrate!(
                    "{} has been blocked for {:.2} s: {} ({}); {}",
                    self.call,
                    t.elapsed().as_secs_f64(),
                    self.now,
                    self.claim,
                    self.reason
                );
            }
        }
    }

    /// How long a caller that sleeps may sleep before [`Stall::tick`] has something to
    /// say (`None`: nothing more to say, sleep until woken).
    pub fn until_tell(&self) -> Option<Duration> {
        match self.since {
            Some(t) if !self.told => Some(TELL_AFTER.saturating_sub(t.elapsed())),
            _ => None,
        }
    }

    /// The wait is over; a narrated one says how long it lasted.
    pub fn end(&mut self) {
        if let Some(t) = self.since.take() {
            let d = t.elapsed();
            self.longest = self.longest.max(d);
            self.total += d;
            if self.told {
                narrate!(
                    "{} blocked for {:.2} s: {} ({}); going on",
                    self.call,
                    d.as_secs_f64(),
                    self.then,
                    self.claim
                );
            }
            self.told = false;
        }
    }

    /// The call that waits (`write()`, `vmsplice()`, ...).
    pub fn call(&self) -> &'static str {
        self.call
    }

    /// Waits so far.
    pub fn episodes(&self) -> u64 {
        self.episodes
    }

    /// A line for the report: "write() waited 1,234 times for room (the pipe was full,
    /// P6): longest 3.02 s, 3.10 s in all"; `None` if it never waited.
    pub fn note(&self) -> Option<String> {
        (self.episodes > 0).then(|| {
            format!(
                "{} waited {} {} for room ({}, {}): longest {}, {} in all",
                self.call,
                self.episodes,
                if self.episodes == 1 { "time" } else { "times" },
                self.then,
                self.claim,
                secs(self.longest),
                secs(self.total)
            )
        })
    }
}

fn secs(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_waits_are_counted_and_a_long_one_is_told() {
        let mut s = Stall::new("write()", "the pipe is full", "the pipe was full", "P6");
        assert!(s.note().is_none());
        for _ in 0..3 {
            s.begin();
            s.tick();
            assert!(!s.told, "a short wait is not narrated");
            s.end();
        }
        assert_eq!((s.episodes(), s.long), (3, 0));
        s.begin();
        // A wait that began long ago (no sleeping in a unit test).
        s.since = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(s.until_tell(), Some(Duration::ZERO));
        s.tick();
        assert!(s.told && s.until_tell().is_none());
        s.end();
        assert_eq!((s.episodes(), s.long), (4, 1));
        let note = s.note().unwrap();
        assert!(
            note.starts_with("write() waited 4 times for room (the pipe was full, P6): longest 2."),
            "{note}"
        );
    }
}
