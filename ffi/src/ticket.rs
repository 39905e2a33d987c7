//! `graft_ticket`: a pending prediction waiting for its label.

use std::sync::Arc;

use graft_rt::adapters::LoadedAdapter;

use crate::boundary::{Failure, Handle, arg_ref, call, free_handle, get};
use crate::status::graft_status;

/// One row's feedback ticket from `graft_session_ticket`. The label reaches the adapter
/// instance that made the prediction, even if its id has since been replaced.
///
/// Lifetime: valid until `graft_ticket_free`; keeps its adapter alive.
/// Thread-safety: may be used from any thread, and by several at once.
#[derive(Debug)]
pub struct graft_ticket {
    row: usize,
    adapter: Arc<LoadedAdapter>,
    value: u64,
}

impl Handle for graft_ticket {
    const TAG: u64 = 0x6772_6166_7454_6b74;
    const NAME: &'static str = "graft_ticket";
}

impl graft_ticket {
    pub(crate) fn new(row: usize, adapter: Arc<LoadedAdapter>, value: u64) -> graft_ticket {
        graft_ticket { row, adapter, value }
    }
}

/// Feeds the row's observed label (0 or 1 for a click, any value in [0, 1]) back to
/// the adapter. A ticket is answered once: a second answer, an evicted ticket or a label
/// outside [0, 1] fails with `GRAFT_STATUS_FEEDBACK_REJECTED` and changes nothing.
///
/// # Safety
/// `ticket` is a live ticket.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_ticket_feedback(ticket: *const graft_ticket, label: f32) -> graft_status {
    call("graft_ticket_feedback", || {
        // SAFETY: the caller's contract.
        let t = unsafe { arg_ref(ticket, "ticket") }?;
        t.adapter.feedback(t.value, label).map_err(|e| {
            let mut failure = Failure::from(e);
            // The kind refused the call's arguments (the label or the ticket).
            if failure.status == graft_status::AdapterInvalid {
                failure.status = graft_status::FeedbackRejected;
            }
            failure
        })
    })
}

/// Writes the batch row the ticket belongs to (in the run that issued it) to `*out`.
///
/// # Safety
/// `ticket` is a live ticket; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_ticket_row(ticket: *const graft_ticket, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_ticket_row", ticket, "ticket", out, |t| Ok(t.row)) }
}

/// Frees a ticket (answered or not). NULL is a no-op.
///
/// # Safety
/// `ticket` is NULL or a ticket from this library not yet freed and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_ticket_free(ticket: *mut graft_ticket) {
    free_handle(ticket);
}
