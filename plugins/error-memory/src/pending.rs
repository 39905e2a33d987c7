//! Predictions awaiting their label: a bounded ring indexed by ticket.
//!
//! Ticket `t` (1, 2, 3, … per adapter instance) lives in slot `(t − 1) mod capacity`, so
//! a full ring overwrites the oldest entry and its ticket becomes "expired". A post takes
//! a block of tickets with one `fetch_add` and then writes each row's slot under that
//! slot's own mutex. Per-slot locks rather than one ring lock, because posts run on many
//! threads at once: two posts contend only if they write the same slot, which needs the
//! ring to wrap around during one slot write, and a post waits for a feedback only while
//! that feedback copies that very slot (`d + L` values). No post ever waits on an insert
//! into the memory, which happens after the slot is released. Locking a `std` mutex does
//! not allocate. A slot never goes back to an older ticket: a post that finds a newer
//! ticket in its slot (it lost a race with a wrap-around) leaves it, and its own ticket
//! reads as expired.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use graft_plugin_abi::{ErrorCode, PluginError};

/// One slot's header; the key and buckets live in the shared data array.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// 0: never written.
    ticket: u64,
    /// The base (uncompensated) prediction, as a probability.
    y_hat: f32,
    answered: bool,
}

/// The ring of pending samples.
pub(crate) struct Pending {
    capacity: usize,
    d: usize,
    tables: usize,
    /// The next ticket to hand out.
    next: AtomicU64,
    slots: Box<[Mutex<Slot>]>,
    /// Per slot: `d` key values (f32 bits) then `L` bucket indices.
    data: Box<[AtomicU32]>,
}

fn ticket_err(ticket: u64, message: impl core::fmt::Display) -> PluginError {
    PluginError::new(ErrorCode::TICKET, "ticket", format!("ticket {ticket}: {message}"))
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A slot is plain data rewritten whole; a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pending {
    /// Bytes one slot takes.
    pub fn slot_bytes(d: usize, tables: usize) -> usize {
        (d + tables) * 4 + size_of::<Mutex<Slot>>()
    }

    /// An empty ring of `capacity` slots.
    pub fn new(capacity: usize, d: usize, tables: usize) -> Result<Pending, PluginError> {
        let alloc_err = |n: usize| {
            PluginError::new(ErrorCode::CONFIG, "pending", format!("cannot allocate a ring of {n} pending samples"))
        };
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).map_err(|_| alloc_err(capacity))?;
        slots.extend((0..capacity).map(|_| Mutex::new(Slot::default())));
        let mut data = Vec::new();
        data.try_reserve_exact(capacity * (d + tables)).map_err(|_| alloc_err(capacity))?;
        data.extend((0..capacity * (d + tables)).map(|_| AtomicU32::new(0)));
        Ok(Pending {
            capacity,
            d,
            tables,
            next: AtomicU64::new(1),
            slots: slots.into_boxed_slice(),
            data: data.into_boxed_slice(),
        })
    }

    /// Bytes of the ring.
    pub fn bytes(&self) -> u64 {
        (self.capacity * Pending::slot_bytes(self.d, self.tables)) as u64
    }

    /// Reserves `n` consecutive tickets and returns the first.
    pub fn reserve(&self, n: usize) -> u64 {
        self.next.fetch_add(n as u64, Ordering::Relaxed)
    }

    fn slot_of(&self, ticket: u64) -> usize {
        ((ticket - 1) % self.capacity as u64) as usize
    }

    /// Records ticket `ticket`'s key, buckets (exact integers as f32) and base prediction.
    pub fn record(&self, ticket: u64, h: &[f32], buckets: &[f32], y_hat: f32) {
        let index = self.slot_of(ticket);
        let mut slot = lock(&self.slots[index]);
        if slot.ticket > ticket {
            return; // a newer ticket already owns the slot: this one is expired
        }
        let base = index * (self.d + self.tables);
        for (cell, &x) in self.data[base..base + self.d].iter().zip(h) {
            cell.store(x.to_bits(), Ordering::Relaxed);
        }
        for (cell, &b) in self.data[base + self.d..base + self.d + self.tables].iter().zip(buckets) {
            cell.store(b as u32, Ordering::Relaxed);
        }
        *slot = Slot { ticket, y_hat, answered: false };
    }

    /// Marks `ticket` answered and copies its key and buckets out; returns its base
    /// prediction. `TICKET` errors say why a ticket cannot be answered.
    pub fn take(&self, ticket: u64, h: &mut [f32], buckets: &mut [u32]) -> Result<f32, PluginError> {
        if ticket == 0 || ticket >= self.next.load(Ordering::Relaxed) {
            return Err(ticket_err(ticket, "unknown (never issued by this adapter)"));
        }
        let index = self.slot_of(ticket);
        let mut slot = lock(&self.slots[index]);
        match slot.ticket.cmp(&ticket) {
            core::cmp::Ordering::Greater => {
                Err(ticket_err(ticket, format_args!("expired (ring of {}): its slot was reused", self.capacity)))
            }
            core::cmp::Ordering::Less => {
                Err(ticket_err(ticket, "unknown (issued to a row that recorded nothing, or not yet recorded)"))
            }
            core::cmp::Ordering::Equal if slot.answered => Err(ticket_err(ticket, "already answered")),
            core::cmp::Ordering::Equal => {
                let base = index * (self.d + self.tables);
                for (out, cell) in h.iter_mut().zip(&self.data[base..base + self.d]) {
                    *out = f32::from_bits(cell.load(Ordering::Relaxed));
                }
                for (out, cell) in buckets.iter_mut().zip(&self.data[base + self.d..base + self.d + self.tables]) {
                    *out = cell.load(Ordering::Relaxed);
                }
                slot.answered = true;
                Ok(slot.y_hat)
            }
        }
    }

    /// Recorded tickets still awaiting a label (a scan; for statistics).
    pub fn outstanding(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| {
                let s = lock(s);
                s.ticket != 0 && !s.answered
            })
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lifecycle() {
        let p = Pending::new(2, 1, 1).unwrap();
        let (mut h, mut b) = ([0.0f32], [0u32]);
        let t = p.reserve(3);
        assert_eq!(t, 1);
        for i in 0..3u64 {
            p.record(t + i, &[i as f32], &[1.0], 0.5);
        }
        // Ticket 1 was overwritten by ticket 3.
        assert!(p.take(1, &mut h, &mut b).unwrap_err().message.contains("expired (ring of 2)"));
        assert_eq!(p.take(3, &mut h, &mut b).unwrap(), 0.5);
        assert_eq!((h, b), ([2.0], [1]));
        assert!(p.take(3, &mut h, &mut b).unwrap_err().message.contains("already answered"));
        assert!(p.take(4, &mut h, &mut b).unwrap_err().message.contains("unknown"));
        assert!(p.take(0, &mut h, &mut b).unwrap_err().message.contains("unknown"));
        assert_eq!(p.outstanding(), 1);
        // A late write of an older ticket never replaces a newer one.
        p.record(1, &[7.0], &[0.0], 0.1); // slot 0 holds ticket 3: ignored
        assert!(p.take(1, &mut h, &mut b).unwrap_err().message.contains("expired"));
        assert!(p.take(3, &mut h, &mut b).unwrap_err().message.contains("already answered"));
    }
}
