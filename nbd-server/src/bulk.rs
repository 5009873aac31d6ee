//! How large reads are answered: sent from the page cache in place, handed
//! to another thread to copy, or copied on the connection's thread.
//!
//! Sending straight from the page cache (`sendfile(2)`, offered by
//! [`BlockDevice::read_in_place`](crate::device::BlockDevice::read_in_place))
//! saves the server its copy, but the client then copies from cold
//! page-cache pages instead of from socket buffers a server's copy just
//! warmed. Which is faster depends on the machine, not only on the load:
//!
//! - While two or more connections read in bulk they share the CPUs, and
//!   copying on each connection's thread wins everywhere we measured.
//! - While one connection reads alone, sendfile was twice as fast as a
//!   copy on one host (Intel), and half as fast as handing the copy to the
//!   blocking pool on another (AMD EPYC; there the client's copy out of
//!   page-aligned pages into its page-aligned buffer ran at a third of the
//!   speed it reached from the same pages 72 bytes off; figures in
//!   docs/nbd.md, "Large reads").
//!
//! So the lone reader's way is measured, not assumed: [`BulkReads`] tries
//! both ways on windows of [`WINDOW_BYTES`], keeps the faster for
//! [`KEEP_WINDOWS`] windows, then tries both again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Reads at least this long count as bulk reads.
pub const BULK_READ: u64 = 128 << 10;

/// How recent another connection's bulk read must be to share the CPUs.
pub const BULK_READ_WINDOW: Duration = Duration::from_millis(20);

/// Bulk bytes of a lone reader's window (reads started in it). Its first
/// [`WINDOW_WARMUP`] bytes are not measured: they go while replies of the
/// other way may still be in flight.
pub const WINDOW_BYTES: u64 = 256 << 20;

/// See [`WINDOW_BYTES`].
pub const WINDOW_WARMUP: u64 = 32 << 20;

/// A pause this long between a lone reader's bulk reads ends a window
/// unmeasured: the rate would be the client's pause, not the way's.
pub const WINDOW_GAP: Duration = Duration::from_millis(20);

/// Windows the faster way is kept for before both are tried again.
pub const KEEP_WINDOWS: u32 = 32;

/// The order ways are tried in (ABBA, so a steady drift of the machine's
/// speed favours neither).
const TRIALS: [BulkWay; 4] = [BulkWay::InPlace, BulkWay::Offload, BulkWay::Offload, BulkWay::InPlace];

/// The other way must beat the kept one by this factor to take over: a
/// window's rate varies by a few percent run to run (up to 10% between
/// rounds on a noisy host), and a change back and forth costs a window of
/// the slower way each time. The first kept way is in place: it costs the
/// server no copy and no thread switch.
const SWITCH_MARGIN: f64 = 1.1;

/// How a lone bulk reader's read is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkWay {
    /// From the page cache with sendfile, when the device can
    /// ([`BlockDevice::read_in_place`](crate::device::BlockDevice::read_in_place));
    /// else as any read.
    InPlace,
    /// Copied on another thread
    /// ([`BlockDevice::read_offloaded`](crate::device::BlockDevice::read_offloaded)),
    /// so the connection sends one reply while the next is read.
    Offload,
}

impl BulkWay {
    fn index(self) -> usize {
        match self {
            BulkWay::InPlace => 0,
            BulkWay::Offload => 1,
        }
    }
}

/// A window in progress: the bytes of the reads started in it, the
/// microseconds of the latest, and, once past the warm-up, when measuring
/// began and at how many bytes.
#[derive(Clone, Copy, Debug)]
struct Window {
    bytes: u64,
    last: u64,
    measured_from: Option<(u64, u64)>,
}

/// Chooses the lone reader's way by measured rate; pure (time is given),
/// so its every step is testable.
#[derive(Debug)]
pub struct WayChooser {
    /// Index into [`TRIALS`] while trying; `TRIALS.len()` while keeping.
    trial: usize,
    /// The way kept between trials.
    chosen: BulkWay,
    /// Windows left before the next trials.
    keep_left: u32,
    /// Per way, bytes and microseconds measured in this round of trials.
    measured: [(u64, u64); 2],
    window: Option<Window>,
}

impl Default for WayChooser {
    fn default() -> WayChooser {
        WayChooser { trial: 0, chosen: BulkWay::InPlace, keep_left: 0, measured: [(0, 0); 2], window: None }
    }
}

impl WayChooser {
    /// The way reads take now.
    pub fn way(&self) -> BulkWay {
        TRIALS.get(self.trial).copied().unwrap_or(self.chosen)
    }

    /// A lone bulk read of `bytes` starts at `now` (microseconds on any
    /// steady clock): the way to answer it.
    pub fn next(&mut self, bytes: u64, now: u64) -> BulkWay {
        let gap = WINDOW_GAP.as_micros() as u64;
        match self.window {
            Some(window) if now.saturating_sub(window.last) > gap => self.window = None,
            Some(Window { bytes: total, measured_from: Some((start, before)), .. })
                if total >= WINDOW_BYTES =>
            {
                self.close(total - before, now.saturating_sub(start).max(1));
                self.window = None;
            }
            _ => {}
        }
        let window = self.window.get_or_insert(Window { bytes: 0, last: now, measured_from: None });
        if window.measured_from.is_none() && window.bytes >= WINDOW_WARMUP {
            window.measured_from = Some((now, window.bytes));
        }
        window.bytes += bytes;
        window.last = now;
        self.way()
    }

    /// Another connection reads in bulk too: the window in progress no
    /// longer measures one reader alone.
    pub fn interrupt(&mut self) {
        self.window = None;
    }

    /// A window of the current way ended: `bytes` in `micros`.
    fn close(&mut self, bytes: u64, micros: u64) {
        let Some(&way) = TRIALS.get(self.trial) else {
            self.keep_left = self.keep_left.saturating_sub(1);
            if self.keep_left == 0 {
                self.trial = 0;
            }
            return;
        };
        let measured = &mut self.measured[way.index()];
        measured.0 += bytes;
        measured.1 += micros;
        self.trial += 1;
        if self.trial < TRIALS.len() {
            return;
        }
        let rate = |(bytes, micros): (u64, u64)| bytes as f64 / micros.max(1) as f64;
        let (in_place, offload) = (rate(self.measured[0]), rate(self.measured[1]));
        let chosen = match self.chosen {
            BulkWay::InPlace if offload > in_place * SWITCH_MARGIN => BulkWay::Offload,
            BulkWay::Offload if in_place > offload * SWITCH_MARGIN => BulkWay::InPlace,
            kept => kept,
        };
        tracing::debug!(
            in_place_mib_s = (in_place * 1e6 / f64::from(1 << 20)) as u64,
            offload_mib_s = (offload * 1e6 / f64::from(1 << 20)) as u64,
            ?chosen,
            changed = chosen != self.chosen,
            "lone bulk reads measured both ways"
        );
        self.chosen = chosen;
        self.keep_left = KEEP_WINDOWS;
        self.measured = [(0, 0); 2];
    }
}

/// Bulk reads, server-wide: when each connection last started one, and how
/// a connection reading alone is answered.
#[derive(Debug)]
pub struct BulkReads {
    epoch: Instant,
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every connection's time of its last bulk read (microseconds since
    /// `epoch`, plus one; 0: none yet).
    members: Vec<Arc<AtomicU64>>,
    chooser: WayChooser,
}

impl Default for BulkReads {
    fn default() -> BulkReads {
        BulkReads { epoch: Instant::now(), inner: parking_lot::Mutex::default() }
    }
}

/// A connection's entry in [`BulkReads`], removed when it ends.
pub(crate) struct BulkMember {
    reads: Arc<BulkReads>,
    last: Arc<AtomicU64>,
}

impl BulkMember {
    pub(crate) fn new(reads: Arc<BulkReads>) -> BulkMember {
        let last = Arc::new(AtomicU64::new(0));
        reads.inner.lock().members.push(last.clone());
        BulkMember { reads, last }
    }

    /// Notes a bulk read of `bytes` starting now. `None` when another
    /// connection started one within [`BULK_READ_WINDOW`] (then the read is
    /// copied on the connection's thread); else the lone reader's way.
    pub(crate) fn way(&self, bytes: u64) -> Option<BulkWay> {
        let now = u64::try_from(self.reads.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        self.last.store(now, Ordering::Relaxed);
        let window = BULK_READ_WINDOW.as_micros() as u64;
        let mut inner = self.reads.inner.lock();
        let alone = inner.members.iter().all(|member| {
            let last = member.load(Ordering::Relaxed);
            Arc::ptr_eq(member, &self.last) || last == 0 || now.saturating_sub(last) > window
        });
        if !alone {
            inner.chooser.interrupt();
            return None;
        }
        Some(inner.chooser.next(bytes, now))
    }
}

impl Drop for BulkMember {
    fn drop(&mut self) {
        self.reads.inner.lock().members.retain(|member| !Arc::ptr_eq(member, &self.last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Feeds 1 MiB reads to `chooser`, each taking as long as its way's
    /// rate (MiB per millisecond) says, for `reads` reads; returns how
    /// many went each way.
    fn run(
        chooser: &mut WayChooser,
        clock: &mut u64,
        reads: usize,
        in_place: u64,
        offload: u64,
    ) -> [usize; 2] {
        let mut counts = [0; 2];
        for _ in 0..reads {
            let way = chooser.next(MIB, *clock);
            counts[way.index()] += 1;
            *clock += 1000 / if way == BulkWay::InPlace { in_place } else { offload };
        }
        counts
    }

    const WINDOW_READS: usize = (WINDOW_BYTES / MIB) as usize;

    #[test]
    fn the_faster_way_is_kept_after_both_are_tried() {
        for (in_place, offload, winner) in [(1, 4, BulkWay::Offload), (4, 1, BulkWay::InPlace)] {
            let mut chooser = WayChooser::default();
            let mut clock = 1;
            // The first window goes in place, the next two offloaded, the
            // fourth in place again; the read after them takes the winner.
            let counts = run(&mut chooser, &mut clock, 4 * WINDOW_READS, in_place, offload);
            assert_eq!(counts, [2 * WINDOW_READS, 2 * WINDOW_READS], "trials of {in_place} vs {offload}");
            let kept = run(&mut chooser, &mut clock, KEEP_WINDOWS as usize * WINDOW_READS, in_place, offload);
            assert_eq!(kept[winner.index()], KEEP_WINDOWS as usize * WINDOW_READS, "{in_place} vs {offload}");
            assert_eq!(chooser.way(), winner);
            // Then both are tried again.
            let counts = run(&mut chooser, &mut clock, 4 * WINDOW_READS, in_place, offload);
            assert_eq!(counts, [2 * WINDOW_READS, 2 * WINDOW_READS]);
        }
    }

    #[test]
    fn the_kept_way_changes_only_for_a_clear_win() {
        // Microseconds per MiB: 200 in place, 200 or 190 offloaded (not
        // 10% faster).
        for offload_micros in [200, 190] {
            let mut chooser = WayChooser::default();
            let mut clock = 1;
            for _ in 0..4 * WINDOW_READS + 1 {
                let way = chooser.next(MIB, clock);
                clock += if way == BulkWay::InPlace { 200 } else { offload_micros };
            }
            assert_eq!(chooser.way(), BulkWay::InPlace, "offloaded at {offload_micros} µs per MiB");
        }
        let mut chooser = WayChooser::default();
        let mut clock = 1;
        run(&mut chooser, &mut clock, 4 * WINDOW_READS + 1, 5, 6);
        assert_eq!(chooser.way(), BulkWay::Offload, "20% faster offloaded wins");
        // Kept now: in place 5% faster does not take it back, 20% does.
        let round = (4 + KEEP_WINDOWS as usize) * WINDOW_READS;
        run(&mut chooser, &mut clock, round, 21, 20);
        assert_eq!(chooser.way(), BulkWay::Offload, "5% faster in place");
        run(&mut chooser, &mut clock, round, 6, 5);
        assert_eq!(chooser.way(), BulkWay::InPlace, "20% faster in place");
    }

    #[test]
    fn the_first_reads_after_a_change_of_way_are_not_measured() {
        // In place: 250 µs per MiB, but the first warm-up's worth of reads
        // after each change of way take ten times that; offloaded: 333 µs.
        // Counted whole, in place would lose (1.9 against 3 MiB per ms);
        // past the warm-up it wins (4 against 3).
        let warm_up = (WINDOW_WARMUP / MIB) as usize;
        let mut chooser = WayChooser::default();
        let (mut clock, mut since_change, mut last) = (1, 0, None);
        for _ in 0..4 * WINDOW_READS + 1 {
            let way = chooser.next(MIB, clock);
            since_change = if last == Some(way) { since_change + 1 } else { 0 };
            last = Some(way);
            clock += match way {
                BulkWay::InPlace if since_change < warm_up => 2500,
                BulkWay::InPlace => 250,
                BulkWay::Offload => 333,
            };
        }
        assert_eq!(chooser.way(), BulkWay::InPlace);
    }

    #[test]
    fn pauses_and_other_readers_end_a_window_unmeasured() {
        let mut chooser = WayChooser::default();
        let mut clock = 1;
        let gap = WINDOW_GAP.as_micros() as u64 + 1;
        // Reads in place, each after a pause: no window ever completes, so
        // the trials never move on.
        for _ in 0..3 * WINDOW_READS {
            assert_eq!(chooser.next(MIB, clock), BulkWay::InPlace);
            clock += gap;
        }
        // Another connection's bulk read ends each window just short of its end.
        for _ in 0..3 {
            run(&mut chooser, &mut clock, WINDOW_READS, 1, 1);
            chooser.interrupt();
        }
        assert_eq!(chooser.way(), BulkWay::InPlace);
        // A whole window without either moves the trials on.
        run(&mut chooser, &mut clock, WINDOW_READS + 1, 1, 1);
        assert_eq!(chooser.way(), BulkWay::Offload);
    }

    #[test]
    fn a_lone_reader_is_measured_and_a_second_reader_copies() {
        let reads = Arc::new(BulkReads::default());
        let (one, two) = (BulkMember::new(reads.clone()), BulkMember::new(reads.clone()));
        assert_eq!(one.way(MIB), Some(BulkWay::InPlace));
        assert_eq!(two.way(MIB), None, "a second reader within the window copies");
        assert_eq!(one.way(MIB), None);
        drop(two);
        assert_eq!(one.way(MIB), Some(BulkWay::InPlace), "alone again once the other is gone");
    }
}
