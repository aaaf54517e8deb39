//! Work that outlives a request: audit records of calls that held no durable
//! state, and settlements whose request ended before they were acknowledged.
//! A request's own callouts die with it, so each worker VM keeps this outbox
//! and its root context drains it (see [`crate::root::Root`]).

use std::collections::VecDeque;

use crate::wire::{CallRecord, CallRecordBatch, SettleRequest};

#[derive(Debug, Default)]
pub struct Outbox {
    records: VecDeque<CallRecord>,
    settlements: VecDeque<SettleRequest>,
    limit: usize,
    /// Records dropped because the queue was full (the control service was unreachable for long).
    pub dropped: u64,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox { limit, ..Default::default() }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn push_record(&mut self, record: CallRecord) {
        if self.records.len() >= self.limit {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
    }

    /// Settlements are never dropped: each one releases or commits money.
    pub fn push_settlement(&mut self, settlement: SettleRequest) {
        self.settlements.push_back(settlement);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.settlements.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len() + self.settlements.len()
    }

    /// Takes up to `max` items, settlements first.
    pub fn take_batch(&mut self, max: usize) -> Option<CallRecordBatch> {
        if self.is_empty() {
            return None;
        }
        let n = self.settlements.len().min(max);
        let orphaned_settlements: Vec<_> = self.settlements.drain(..n).collect();
        let m = self.records.len().min(max.saturating_sub(n));
        let records: Vec<_> = self.records.drain(..m).collect();
        Some(CallRecordBatch { records, orphaned_settlements })
    }

    /// Puts back a batch whose delivery failed, ahead of newer items.
    pub fn requeue(&mut self, batch: CallRecordBatch) {
        for s in batch.orphaned_settlements.into_iter().rev() {
            self.settlements.push_front(s);
        }
        for r in batch.records.into_iter().rev() {
            self.records.push_front(r);
        }
        while self.records.len() > self.limit {
            self.records.pop_back();
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> CallRecord {
        CallRecord { call_id: id.into(), ..Default::default() }
    }

    #[test]
    fn batches_settlements_first_and_requeues_in_order() {
        let mut o = Outbox::new(10);
        o.push_record(rec("a"));
        o.push_record(rec("b"));
        o.push_settlement(SettleRequest { call_id: "s".into(), ..Default::default() });
        let batch = o.take_batch(2).unwrap();
        assert_eq!(batch.orphaned_settlements.len(), 1);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(o.len(), 1);
        o.requeue(batch);
        let again = o.take_batch(10).unwrap();
        let ids: Vec<_> = again.records.iter().map(|r| r.call_id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b"]);
        assert!(o.take_batch(10).is_none());
    }

    #[test]
    fn drops_oldest_records_beyond_the_limit_but_never_settlements() {
        let mut o = Outbox::new(2);
        for id in ["a", "b", "c"] {
            o.push_record(rec(id));
        }
        for _ in 0..5 {
            o.push_settlement(SettleRequest::default());
        }
        assert_eq!(o.dropped, 1);
        assert_eq!(o.len(), 7);
    }
}
