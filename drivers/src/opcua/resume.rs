//! Keeping a subscription's changes across a lost connection.
//!
//! An OPC UA server keeps a session and its subscriptions for a while after
//! the connection is gone: changes go on queueing there, and the
//! notifications it sent that the gateway never acknowledged stay in its
//! retransmission queue. After a reconnect the session task:
//!
//! 1. takes its subscriptions back with `TransferSubscriptions` (into the
//!    new session, or confirming them in the old one when the server let
//!    the gateway reactivate it), which also answers which notifications
//!    the server can still send again;
//! 2. asks with `Republish` for each of those the gateway never received
//!    (sent on the old connection as it died);
//! 3. asks the server to send every item's current value again (the values
//!    were marked stale while the link was down): the transfer's
//!    `sendInitialValues`, and the `ResendData` method for a subscription
//!    that stayed in its session.
//!
//! The server's queued changes then arrive in order on the new connection.
//! A subscription the server no longer has (it restarted, or the outage
//! outlived the subscription's lifetime) cannot be resumed: the session
//! task then subscribes afresh, which reads every current value, and raises
//! an event saying that changes in between may be missing.
//!
//! [`Notifications`] is each subscription's callback: it queues the data
//! changes for the session task and follows the sequence numbers, so that a
//! notification that never arrived is known ([`Sequence`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    CallMethodRequest, DataChangeNotification, EventNotificationList, MethodId, NodeId,
    NotificationMessage, ObjectId, StatusChangeNotification, StatusCode, Variant,
};

use super::session::DataSender;

/// Most notification numbers remembered as missing; beyond that a gap is
/// counted but not chased.
const MAX_MISSING: usize = 4096;

/// One subscription's sequence numbers: the newest seen, and those skipped.
#[derive(Debug, Default)]
pub(super) struct Sequence {
    /// The newest data notification's number seen, 0 before the first.
    newest: u32,
    /// Numbers skipped over and not (yet) received.
    missing: BTreeSet<u32>,
    /// Skipped numbers that did not fit in `missing`.
    uncounted: u64,
    /// Notifications received by Publish (not Republish), keep-alives too.
    live: u64,
}

impl Sequence {
    /// Notes a notification. A keep-alive carries the number the next data
    /// notification will have (it does not use it up); a data notification
    /// carries its own.
    pub(super) fn see(&mut self, number: u32, keep_alive: bool) -> bool {
        // The newest number the server has used.
        let upto = if keep_alive {
            predecessor(number)
        } else {
            number
        };
        if self.newest == 0 {
            // The first one: nothing before it was ours to miss.
            self.newest = upto;
            return false;
        }
        let mut gap = 0;
        if after(upto, self.newest) {
            // Numbers strictly between, and `upto` itself when a keep-alive
            // says it was used; zero is skipped when the numbers wrap.
            gap = u64::from(upto.wrapping_sub(self.newest)) - 1;
            if upto < self.newest {
                gap -= 1;
            }
            if keep_alive {
                gap += 1;
            }
            let mut next = successor(self.newest);
            let mut noted = 0;
            while noted < gap && self.missing.len() < MAX_MISSING {
                self.missing.insert(next);
                next = successor(next);
                noted += 1;
            }
            self.uncounted += gap - noted;
            self.newest = upto;
        }
        if !keep_alive {
            self.missing.remove(&number);
        }
        gap > 0
    }

    /// Notifications received by Publish so far.
    pub(super) fn live(&self) -> u64 {
        self.live
    }

    /// The number after the newest seen.
    pub(super) fn next(&self) -> u32 {
        successor(self.newest)
    }

    /// The numbers known to be missing (those remembered).
    pub(super) fn missing(&self) -> Vec<u32> {
        self.missing.iter().copied().collect()
    }

    /// Whether notification `number` has not reached the gateway: newer than
    /// the newest seen, or skipped.
    pub(super) fn lacks(&self, number: u32) -> bool {
        self.newest == 0 || after(number, self.newest) || self.missing.contains(&number)
    }

    /// Notifications known to be missing, and forgets them: they are
    /// reported once.
    pub(super) fn take_missing(&mut self) -> u64 {
        let n = self.missing.len() as u64 + self.uncounted;
        self.missing.clear();
        self.uncounted = 0;
        n
    }
}

/// The number after `n` (numbers wrap from `u32::MAX` to 1; 0 is never
/// used).
fn successor(n: u32) -> u32 {
    if n == u32::MAX { 1 } else { n + 1 }
}

/// The number before `n` (see [`successor`]).
fn predecessor(n: u32) -> u32 {
    if n <= 1 { u32::MAX } else { n - 1 }
}

/// Whether `a` comes after `b`, within half the number space (the window
/// that serial-number arithmetic allows).
fn after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// A subscription's callback: data changes go to the session task, and the
/// sequence numbers are followed.
pub(super) struct Notifications {
    pub(super) data: DataSender,
    pub(super) sequence: Arc<Mutex<Sequence>>,
    pub(super) device: Arc<str>,
    /// Told when a notification is found missing, so that the session
    /// task asks for it again.
    pub(super) gaps: Arc<tokio::sync::Notify>,
}

impl OnSubscriptionNotificationCore for Notifications {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let keep_alive = notification
            .notification_data
            .as_ref()
            .is_none_or(Vec::is_empty);
        let (fresh, gap) = {
            let mut sequence = lock(&self.sequence);
            sequence.live += 1;
            let fresh = sequence.lacks(notification.sequence_number);
            (
                fresh,
                sequence.see(notification.sequence_number, keep_alive),
            )
        };
        // A notification already republished is not delivered twice.
        if fresh {
            deliver(&self.data, &self.device, notification);
        }
        if gap {
            self.gaps.notify_one();
        }
    }
}

/// Queues the data changes of `notification` (received, or republished),
/// and journals its events.
pub(super) fn deliver(data: &DataSender, device: &str, notification: NotificationMessage) {
    for object in notification.notification_data.into_iter().flatten() {
        if object.inner_as::<DataChangeNotification>().is_some() {
            let changes = object.into_inner_as::<DataChangeNotification>();
            for change in changes
                .into_iter()
                .flat_map(|c| c.monitored_items)
                .flatten()
            {
                data.send(change.client_handle, change.value);
            }
        } else if object.inner_as::<EventNotificationList>().is_some() {
            let events = object.into_inner_as::<EventNotificationList>();
            let Some(sink) = &data.events else { continue };
            for event in events.into_iter().flat_map(|e| e.events).flatten() {
                if event.client_handle == super::events::EVENTS_HANDLE {
                    sink.take(event.event_fields.as_deref().unwrap_or_default());
                }
            }
        } else if let Some(status) = object.inner_as::<StatusChangeNotification>() {
            tracing::warn!(
                device,
                "the server says the subscription is now {}",
                status.status
            );
        }
    }
}

pub(super) fn lock(sequence: &Mutex<Sequence>) -> std::sync::MutexGuard<'_, Sequence> {
    sequence
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A subscription as the session task keeps it.
pub(super) struct Subscription {
    pub(super) id: u32,
    pub(super) sequence: Arc<Mutex<Sequence>>,
}

/// What a resume or a repair did.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Repaired {
    /// Notifications sent again by `Republish`.
    pub(super) republished: u64,
    /// Notifications that never arrived and that the server no longer had.
    pub(super) missing: u64,
    /// Subscriptions whose current values the server would not send again
    /// (no `ResendData`); the session task reads them instead.
    pub(super) reread: bool,
}

impl std::ops::AddAssign for Repaired {
    fn add_assign(&mut self, other: Repaired) {
        self.republished += other.republished;
        self.missing += other.missing;
        self.reread |= other.reread;
    }
}

/// Why a subscription could not be resumed.
pub(super) struct Lost(pub(super) String);

/// What taking subscriptions back, and asking for notifications again,
/// works with: the session, where data changes go, and how long a request
/// may take.
pub(super) struct Resumer<'a> {
    pub(super) session: &'a Session,
    pub(super) data: &'a DataSender,
    pub(super) device: &'a str,
    pub(super) timeout: std::time::Duration,
}

impl Resumer<'_> {
    /// Takes the subscriptions back after a reconnect (see the module's
    /// comment). `same_session`: the server reactivated the old session.
    /// `started`: the server's start time when the subscriptions were made.
    ///
    /// Into a new session, only from the same run of the server: a server
    /// that restarted numbers subscriptions afresh, and some (asyncua) hand
    /// over whichever subscription has the number asked for, another
    /// client's included.
    pub(super) async fn resume(
        &self,
        subscriptions: &[Subscription],
        same_session: bool,
        started: Option<i64>,
    ) -> Result<Repaired, Lost> {
        let mut resumed = Repaired::default();
        if subscriptions.is_empty() {
            return Ok(resumed);
        }
        if !same_session {
            let now = start_time(self.session, self.timeout).await;
            if started.is_none() || now != started {
                return Err(Lost(
                    "the server no longer had the session, and restarted (or does not say when it started)"
                        .into(),
                ));
            }
        }
        let timeout = self.timeout;
        let ids: Vec<u32> = subscriptions.iter().map(|s| s.id).collect();
        let results =
            tokio::time::timeout(timeout, self.session.transfer_subscriptions(&ids, true))
                .await
                .map_err(|_| {
                    Lost(format!(
                        "no answer to TransferSubscriptions within {timeout:?}"
                    ))
                })?
                .map_err(|e| Lost(format!("TransferSubscriptions failed: {e}")))?;
        if results.len() != ids.len() {
            return Err(Lost(format!(
                "the server answered {} results to transferring {} subscriptions",
                results.len(),
                ids.len()
            )));
        }
        for (subscription, result) in subscriptions.iter().zip(&results) {
            if result.status_code.is_bad() {
                return Err(Lost(format!(
                    "the server no longer has subscription {} ({})",
                    subscription.id, result.status_code
                )));
            }
        }
        for (subscription, result) in subscriptions.iter().zip(results) {
            // Sent on the old connection as it died, never received.
            let unseen: Vec<u32> = {
                let sequence = lock(&subscription.sequence);
                result
                    .available_sequence_numbers
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| sequence.lacks(*n))
                    .collect()
            };
            resumed += self.republish(subscription, unseen).await;
            if same_session && !self.resend_data(subscription.id).await {
                resumed.reread = true;
            }
        }
        Ok(resumed)
    }

    /// Asks again for every notification found missing (a gap in the
    /// sequence numbers: a Publish response lost with its connection, say).
    pub(super) async fn repair(&self, subscriptions: &[Subscription]) -> Repaired {
        let mut repaired = Repaired::default();
        for subscription in subscriptions {
            let missing = lock(&subscription.sequence).missing();
            repaired += self.republish(subscription, missing).await;
        }
        repaired
    }

    /// Asks for the notifications after the newest seen, one by one, until
    /// the server has no more: those it sent since a reconnect in answer to
    /// Publish requests of the dead connection (a server may keep them
    /// queued, and answer them first). Returns how many it sent again.
    pub(super) async fn catch_up(&self, subscriptions: &[Subscription]) -> u64 {
        let mut caught = 0;
        for subscription in subscriptions {
            loop {
                let next = lock(&subscription.sequence).next();
                match self.again(subscription, next).await {
                    Ok(true) => caught += 1,
                    Ok(false) | Err(_) => break,
                }
            }
        }
        caught
    }

    /// Republishes `numbers` of `subscription` (those still lacking), then
    /// counts what is still missing as lost (and forgets it).
    async fn republish(&self, subscription: &Subscription, numbers: Vec<u32>) -> Repaired {
        let mut repaired = Repaired::default();
        for number in numbers {
            // It may have come meanwhile.
            if !lock(&subscription.sequence).lacks(number) {
                continue;
            }
            match self.again(subscription, number).await {
                Ok(true) => repaired.republished += 1,
                Ok(false) => {}
                Err(code) => tracing::debug!(
                    device = self.device,
                    "cannot republish notification {number} of subscription {}: {code}",
                    subscription.id
                ),
            }
        }
        repaired.missing = lock(&subscription.sequence).take_missing();
        repaired
    }

    /// Asks for notification `number` again and delivers it, unless it
    /// came meanwhile (`Ok(false)`).
    async fn again(&self, subscription: &Subscription, number: u32) -> Result<bool, StatusCode> {
        let message = tokio::time::timeout(
            self.timeout,
            self.session.republish(subscription.id, number),
        )
        .await
        .map_err(|_| StatusCode::BadTimeout)?
        .map_err(|e| e.status())?;
        let fresh = {
            let mut sequence = lock(&subscription.sequence);
            let fresh = sequence.lacks(message.sequence_number);
            // Seen now; a number skipped before it stays missing.
            sequence.see(message.sequence_number, false);
            fresh
        };
        if fresh {
            deliver(self.data, self.device, message);
        }
        Ok(fresh)
    }

    /// Asks the server to send every item's current value again (the
    /// `ResendData` method, OPC UA Part 5 9.4); false when it will not.
    async fn resend_data(&self, subscription: u32) -> bool {
        let call = CallMethodRequest {
            object_id: NodeId::from(ObjectId::Server),
            method_id: NodeId::from(MethodId::Server_ResendData),
            input_arguments: Some(vec![Variant::UInt32(subscription)]),
        };
        match tokio::time::timeout(self.timeout, self.session.call_one(call)).await {
            Ok(Ok(result)) if result.status_code.is_good() => true,
            Ok(Ok(result)) => {
                tracing::debug!(device = self.device, "ResendData: {}", result.status_code);
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(device = self.device, "ResendData: {e}");
                false
            }
            Err(_) => false,
        }
    }
}

/// The server's start time (`Server.ServerStatus.StartTime`), in 100 ns
/// ticks; `None` when it does not say.
pub(super) async fn start_time(session: &Session, timeout: std::time::Duration) -> Option<i64> {
    let read = [opcua::types::ReadValueId {
        node_id: opcua::types::VariableId::Server_ServerStatus_StartTime.into(),
        attribute_id: opcua::types::AttributeId::Value as u32,
        ..Default::default()
    }];
    let values = tokio::time::timeout(
        timeout,
        session.read(&read, opcua::types::TimestampsToReturn::Neither, 0.0),
    )
    .await
    .ok()?
    .ok()?;
    match values.first()?.value.as_ref()? {
        Variant::DateTime(t) if !t.is_null() => Some(t.checked_ticks()),
        _ => None,
    }
}

/// Whether a notification has come by Publish on any of `subscriptions`
/// since they had received `live` in all.
pub(super) fn live_since(subscriptions: &[Subscription], live: u64) -> bool {
    live_count(subscriptions) != live
}

/// Notifications received by Publish on `subscriptions`, in all.
pub(super) fn live_count(subscriptions: &[Subscription]) -> u64 {
    subscriptions.iter().map(|s| lock(&s.sequence).live()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_notifications_in_order_leave_nothing_missing() {
        let mut s = Sequence::default();
        for n in 1..=5 {
            s.see(n, false);
        }
        s.see(6, true);
        assert!(!s.lacks(5));
        assert!(s.lacks(6), "the next one has not come yet");
        assert_eq!(s.take_missing(), 0);
    }

    #[test]
    fn a_skipped_number_is_missing_until_it_comes() {
        let mut s = Sequence::default();
        s.see(1, false);
        s.see(4, false);
        assert!(s.lacks(2) && s.lacks(3) && !s.lacks(4));
        s.see(2, false);
        assert!(!s.lacks(2) && s.lacks(3));
        assert_eq!(s.take_missing(), 1);
        assert!(!s.lacks(3), "reported once, then forgotten");
    }

    #[test]
    fn a_keep_alive_past_the_newest_means_notifications_were_lost() {
        let mut s = Sequence::default();
        s.see(7, false);
        // The next data notification will be 10: 8 and 9 were sent.
        s.see(10, true);
        assert!(s.lacks(8) && s.lacks(9) && s.lacks(10));
        assert_eq!(s.take_missing(), 2);
        // A keep-alive naming the next number changes nothing.
        s.see(10, false);
        s.see(11, true);
        assert_eq!(s.take_missing(), 0);
    }

    #[test]
    fn numbers_wrap_past_the_top_skipping_zero() {
        let mut s = Sequence::default();
        s.see(u32::MAX - 1, false);
        s.see(2, false);
        assert!(s.lacks(u32::MAX) && s.lacks(1) && !s.lacks(2));
        assert_eq!(s.take_missing(), 2, "u32::MAX and 1; never 0");
        // A keep-alive for 1 says u32::MAX was the last used.
        let mut s = Sequence::default();
        s.see(u32::MAX - 2, false);
        s.see(1, true);
        assert_eq!(s.take_missing(), 2, "u32::MAX - 1 and u32::MAX");
        assert!(after(1, u32::MAX));
        assert!(!after(u32::MAX, 1));
    }

    #[test]
    fn a_huge_gap_is_counted_without_remembering_every_number() {
        let mut s = Sequence::default();
        s.see(1, false);
        s.see(100_002, false);
        assert_eq!(s.missing.len(), MAX_MISSING);
        assert_eq!(s.take_missing(), 100_000);
        // A server that jumps half the number space costs no time.
        s.see(100_002u32.wrapping_add((1 << 31) - 1), false);
        assert_eq!(s.take_missing(), (1 << 31) - 2);
    }
}
