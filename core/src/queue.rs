//! A bounded queue that makes room by dropping its oldest entry, for
//! producers that must never wait (a rule engine's loop handing jobs to a
//! rule's worker) and whose newest entries matter most.
//!
//! tokio's `mpsc` can bound a queue, but when it is full the producer must
//! wait or give up the *newest* item; here the oldest goes, is handed back
//! to the producer (to count and log), and the consumer still sees the rest
//! in order.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// The queue. One or more producers, one consumer.
#[derive(Debug)]
pub struct DropOldest<T> {
    items: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    closed: bool,
}

impl<T> DropOldest<T> {
    /// A queue of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        DropOldest {
            items: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends `item`. When the queue is full, the oldest entry makes room
    /// and is returned. After [`DropOldest::close`], `item` itself comes back.
    pub fn push(&self, item: T) -> Option<T> {
        let mut state = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Some(item);
        }
        let dropped = if state.queue.len() >= self.capacity {
            state.queue.pop_front()
        } else {
            None
        };
        state.queue.push_back(item);
        drop(state);
        self.ready.notify_one();
        dropped
    }

    /// The oldest entry, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.items.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(item) = state.queue.pop_front() {
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more pushes; `pop` drains what is left, then returns `None`.
    pub fn close(&self) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_one();
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_and_keeps_the_order_of_the_rest() {
        let queue = DropOldest::new(3);
        assert_eq!(queue.push(1), None);
        assert_eq!(queue.push(2), None);
        assert_eq!(queue.push(3), None);
        assert_eq!(queue.push(4), Some(1), "the oldest makes room");
        assert_eq!(queue.push(5), Some(2));
        assert_eq!(queue.len(), 3, "never more than its capacity");
        assert_eq!(queue.pop().await, Some(3));
        assert_eq!(queue.pop().await, Some(4));
        assert_eq!(queue.pop().await, Some(5));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_and_ends_after_close() {
        let queue = Arc::new(DropOldest::new(2));
        let consumer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(item) = queue.pop().await {
                    got.push(item);
                }
                got
            })
        };
        tokio::task::yield_now().await;
        queue.push("a");
        queue.push("b");
        queue.close();
        assert_eq!(queue.push("late"), Some("late"), "closed: handed back");
        let got = consumer.await.expect("consumer");
        assert_eq!(got, ["a", "b"], "what was queued before close is drained");
    }
}
