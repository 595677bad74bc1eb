//! The answer gate: lets through only the answer to the request on the wire.
//!
//! A link shares one connection between every unit behind it. When a unit
//! does not answer in time, the link gives up on that request and sends the
//! next one, for another unit, on the same connection. If the slow unit's
//! answer then arrives, tokio-modbus would read it as the answer to the new
//! request and fail it (a header mismatch), so the only safe course used to
//! be a fresh connection after every timeout: one dead meter made all its
//! neighbours reconnect every cycle.
//!
//! [`AnswerGate`] sits between tokio-modbus and the socket (or serial port).
//! It watches the request frames going out, splits the bytes coming in into
//! frames, and passes on only the frame that answers the latest request:
//! - Modbus TCP (MBAP): the transaction id must match; any other frame is a
//!   late answer and is dropped.
//! - RTU framing (a serial bus, or RTU over TCP): there is no transaction id,
//!   so the unit and function code must match. After a timeout the link asks
//!   the gate to [`Gate::abandon`] the request: whatever has arrived by the
//!   next request is dropped before it goes out. A late answer from the same
//!   unit to the same function that arrives after that cannot be told from
//!   the real one; RTU devices answer in milliseconds or not at all, so the
//!   window is small, and the 3.5-character gap keeps it so.
//!
//! On a serial line the gate also keeps the quiet time RTU framing needs
//! before each request ([`AnswerGate::with_gap`]).
//!
//! The link reads [`Gate::frames`] to tell a silent unit (other units still
//! answer) from a dead connection (nothing arrives at all).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How frames are delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP: a 7-byte MBAP header with a transaction id and a length.
    Mbap,
    /// RTU: unit, function code, data, CRC-16.
    Rtu,
}

/// What the link and its gate share.
#[derive(Debug, Default)]
pub struct Gate {
    abandoned: AtomicBool,
    writing: AtomicBool,
    frames: AtomicU64,
    dropped: AtomicU64,
}

impl Gate {
    /// The request on the wire will get no answer the link waits for: drop
    /// what has arrived before the next request goes out.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// True while a request is part-way out (started, not yet flushed). A
    /// timeout then leaves the stream in an unknown state: the link must
    /// not send on it again.
    pub fn torn(&self) -> bool {
        self.writing.load(Ordering::Relaxed)
    }

    /// Frames received so far, passed on or dropped: proof of a live peer.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames dropped as answers to no request on the wire.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Which answer the gate waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// An MBAP transaction id.
    Transaction(u16),
    /// An RTU unit and function code.
    UnitFunction(u8, u8),
}

/// A transport (a `TcpStream` or a serial port) with the gate in front of
/// its reading side.
#[derive(Debug)]
pub struct AnswerGate<S> {
    inner: S,
    framing: Framing,
    gate: Arc<Gate>,
    /// The answer the gate waits for, if a request is on the wire.
    expected: Option<Expected>,
    /// The first bytes of the request being written (enough for its key).
    head: Vec<u8>,
    /// True between a flush and the next write: the next byte starts a frame.
    frame_start: bool,
    /// Bytes read but not yet sorted into frames.
    incoming: BytesMut,
    /// The answer, passed on to tokio-modbus as it reads.
    ready: BytesMut,
    /// The quiet time before a request, after the last frame received.
    gap: Option<Duration>,
    /// When the last frame was received.
    last_frame_at: Option<Instant>,
    /// The wait for the gap, while a request is held back.
    pause: Option<Pin<Box<Sleep>>>,
}

/// The longest MBAP length field: unit id plus a 253-byte PDU.
const MAX_MBAP_LENGTH: usize = 254;
/// The RTU checksum, as tokio-modbus computes it.
const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

impl<S> AnswerGate<S> {
    /// `inner` behind a gate; the link keeps `gate`.
    pub fn new(inner: S, framing: Framing, gate: Arc<Gate>) -> Self {
        AnswerGate {
            inner,
            framing,
            gate,
            expected: None,
            head: Vec::with_capacity(2),
            frame_start: true,
            incoming: BytesMut::new(),
            ready: BytesMut::new(),
            gap: None,
            last_frame_at: None,
            pause: None,
        }
    }

    /// Holds each request back until `gap` has passed since the last frame
    /// received: RTU's 3.5-character silence on a serial line.
    pub fn with_gap(mut self, gap: Duration) -> Self {
        self.gap = Some(gap);
        self
    }

    /// The length of the frame at the start of `incoming`, once that much is
    /// known. `Ok(None)`: need more bytes. `Ok(Some(0))`: no answer starts
    /// here (RTU noise).
    fn frame_len(&self) -> io::Result<Option<usize>> {
        let b = &self.incoming[..];
        match self.framing {
            Framing::Mbap => {
                if b.len() < 6 {
                    return Ok(None);
                }
                let length = usize::from(u16::from_be_bytes([b[4], b[5]]));
                if !(2..=MAX_MBAP_LENGTH).contains(&length) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("MBAP length {length} is outside 2..={MAX_MBAP_LENGTH}"),
                    ));
                }
                Ok(Some(6 + length))
            }
            Framing::Rtu => {
                if b.len() < 2 {
                    return Ok(None);
                }
                let function = b[1];
                // The link sends only these functions, so an answer is one
                // of them or its exception.
                Ok(match function & 0x7f {
                    1..=6 | 15 | 16 if function & 0x80 != 0 => Some(5),
                    1..=4 => b.get(2).map(|&count| 3 + usize::from(count) + 2),
                    5 | 6 | 15 | 16 => Some(8),
                    _ => Some(0),
                })
            }
        }
    }

    /// The key of a frame (its first two bytes).
    fn key_of(&self, frame: &[u8]) -> Expected {
        match self.framing {
            Framing::Mbap => Expected::Transaction(u16::from_be_bytes([frame[0], frame[1]])),
            Framing::Rtu => Expected::UnitFunction(frame[0], frame[1] & 0x7f),
        }
    }

    /// Sorts complete frames out of `incoming`: the awaited answer goes to
    /// `ready`, others are dropped. Returns once `ready` holds bytes or more
    /// must be read.
    fn sort(&mut self) -> io::Result<()> {
        while self.ready.is_empty() && !self.incoming.is_empty() {
            let Some(len) = self.frame_len()? else { break };
            if len == 0 {
                self.incoming.advance(1);
                continue;
            }
            if self.incoming.len() < len {
                break;
            }
            if self.framing == Framing::Rtu {
                let (body, crc) = self.incoming[..len].split_at(len - 2);
                if CRC.checksum(body) != u16::from_le_bytes([crc[0], crc[1]]) {
                    // Noise or a torn frame: step a byte and look again, as
                    // tokio-modbus's own decoder does.
                    self.incoming.advance(1);
                    continue;
                }
            }
            let frame = self.incoming.split_to(len);
            self.gate.frames.fetch_add(1, Ordering::Relaxed);
            if self.gap.is_some() {
                self.last_frame_at = Some(Instant::now());
            }
            let key = self.key_of(&frame);
            if self.expected == Some(key) {
                self.expected = None;
                self.ready = frame;
            } else {
                self.gate.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "modbus: dropped an answer to no request on the wire ({key:?}, waiting for {:?})",
                    self.expected
                );
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AnswerGate<S> {
    /// Reads what is already there without waiting, and drops it: what an
    /// abandoned request's late answer left on the line. Its frames are
    /// sorted (with no answer awaited) so that they count as heard, then
    /// whatever is left, a frame's start or noise, goes too.
    fn drain(&mut self, cx: &mut Context<'_>) {
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.incoming.extend_from_slice(buf.filled());
                }
                // End of stream, an error or nothing more: the read that
                // follows the request will see the first two again.
                _ => break,
            }
        }
        self.expected = None;
        // A malformed length here is the old answer's: dropped with it.
        let _ = self.sort();
        self.incoming.clear();
        self.ready.clear();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnswerGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.sort()?;
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 512];
            let mut more = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut more))?;
            if more.filled().is_empty() {
                // End of stream: tokio-modbus reports it (a torn frame too).
                return Poll::Ready(Ok(()));
            }
            this.incoming.extend_from_slice(more.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AnswerGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.frame_start {
            this.gate.writing.store(true, Ordering::Relaxed);
            if let (Some(gap), Some(last)) = (this.gap, this.last_frame_at) {
                let until = last + gap;
                if Instant::now() < until {
                    let pause = this
                        .pause
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    ready!(pause.as_mut().poll(cx));
                }
                this.pause = None;
            }
            // A new request: nothing read so far answers it.
            if this.gate.abandoned.swap(false, Ordering::Relaxed) {
                this.drain(cx);
            }
            this.ready.clear();
            this.expected = None;
            this.head.clear();
            this.frame_start = false;
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        if this.head.len() < 2 {
            let want = (2 - this.head.len()).min(written);
            this.head.extend_from_slice(&data[..want]);
            if this.head.len() == 2 {
                // A request's first two bytes key it as its answer's do.
                this.expected = Some(this.key_of(&this.head));
            }
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        // tokio-modbus writes one request, then flushes.
        this.frame_start = true;
        this.gate.writing.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn mbap(transaction: u16, pdu: &[u8]) -> Vec<u8> {
        let mut frame = transaction.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        frame.push(1);
        frame.extend_from_slice(pdu);
        frame
    }

    fn rtu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut frame = vec![unit];
        frame.extend_from_slice(pdu);
        let crc = CRC.checksum(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    async fn request(gated: &mut AnswerGate<tokio::io::DuplexStream>, frame: &[u8]) {
        gated.write_all(frame).await.expect("write");
        gated.flush().await.expect("flush");
    }

    #[tokio::test]
    async fn a_late_mbap_answer_is_dropped_and_the_awaited_one_passes() {
        let (ours, mut peer) = duplex(1024);
        let gate = Arc::new(Gate::default());
        let mut gated = AnswerGate::new(ours, Framing::Mbap, gate.clone());
        request(&mut gated, &mbap(7, &[3, 0, 0, 0, 1])).await;
        // The answer to an earlier request (5), then the awaited one (7).
        peer.write_all(&mbap(5, &[3, 2, 0, 9])).await.expect("peer");
        let awaited = mbap(7, &[3, 2, 0, 42]);
        peer.write_all(&awaited).await.expect("peer");
        let mut got = vec![0; awaited.len()];
        gated.read_exact(&mut got).await.expect("read");
        assert_eq!(got, awaited);
        assert_eq!((gate.frames(), gate.dropped()), (2, 1));
        assert!(!gate.torn(), "the request went out whole");
    }

    #[tokio::test]
    async fn a_request_cut_off_half_written_leaves_the_gate_torn() {
        // Four bytes of room: the 12-byte request cannot go out whole.
        let (ours, mut peer) = duplex(4);
        let gate = Arc::new(Gate::default());
        let mut gated = AnswerGate::new(ours, Framing::Mbap, gate.clone());
        let frame = mbap(1, &[3, 0, 0, 0, 1]);
        let sent = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            gated.write_all(&frame),
        )
        .await;
        assert!(sent.is_err(), "the write waits for room");
        assert!(gate.torn());
        let mut head = [0; 4];
        peer.read_exact(&mut head).await.expect("what got out");
        assert_eq!(head, frame[..4]);
    }

    #[tokio::test]
    async fn an_mbap_length_out_of_range_is_an_error() {
        let (ours, mut peer) = duplex(1024);
        let mut gated = AnswerGate::new(ours, Framing::Mbap, Arc::new(Gate::default()));
        request(&mut gated, &mbap(1, &[3, 0, 0, 0, 1])).await;
        peer.write_all(&[0, 1, 0, 0, 0x10, 0, 1, 3])
            .await
            .expect("peer");
        let mut got = [0; 8];
        let e = gated.read_exact(&mut got).await.expect_err("bad length");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn rtu_answers_from_another_unit_or_with_a_bad_checksum_are_dropped() {
        let (ours, mut peer) = duplex(1024);
        let gate = Arc::new(Gate::default());
        let mut gated = AnswerGate::new(ours, Framing::Rtu, gate.clone());
        request(&mut gated, &rtu(2, &[3, 0, 0, 0, 1])).await;
        // Line noise, then unit 2's answer with its checksum broken, then
        // unit 9's answer: the gate steps over the noise byte by byte.
        peer.write_all(&[0xff, 0x00]).await.expect("peer");
        let mut broken = rtu(2, &[6, 0, 1, 0, 7]);
        broken[7] ^= 0xff;
        peer.write_all(&broken).await.expect("peer");
        peer.write_all(&rtu(9, &[3, 2, 0, 9])).await.expect("peer");
        let awaited = rtu(2, &[0x83, 2]);
        peer.write_all(&awaited).await.expect("peer");
        let mut got = vec![0; awaited.len()];
        gated.read_exact(&mut got).await.expect("read");
        assert_eq!(got, awaited);
        assert_eq!(gate.dropped(), 1, "unit 9's answer");
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_serial_line_a_request_waits_out_the_gap_after_the_last_answer() {
        let (ours, mut peer) = duplex(1024);
        let gap = crate::modbus::link::rtu_gap(1200);
        assert_eq!(
            gap.as_micros(),
            32_083,
            "3.5 characters of 11 bits at 1200 baud"
        );
        let mut gated =
            AnswerGate::new(ours, Framing::Rtu, Arc::new(Gate::default())).with_gap(gap);
        request(&mut gated, &rtu(2, &[3, 0, 0, 0, 1])).await;
        let answer = rtu(2, &[3, 2, 0, 1]);
        peer.write_all(&answer).await.expect("peer");
        let mut got = vec![0; answer.len()];
        gated.read_exact(&mut got).await.expect("read");
        let answered = Instant::now();
        request(&mut gated, &rtu(2, &[3, 0, 0, 0, 1])).await;
        assert!(answered.elapsed() >= gap, "{:?}", answered.elapsed());
    }

    #[tokio::test]
    async fn after_abandon_what_arrived_before_the_next_request_is_dropped() {
        let (ours, mut peer) = duplex(1024);
        let gate = Arc::new(Gate::default());
        let mut gated = AnswerGate::new(ours, Framing::Rtu, gate.clone());
        request(&mut gated, &rtu(2, &[3, 0, 0, 0, 1])).await;
        gate.abandon();
        // Unit 2's late answer arrives before the next request to unit 2.
        peer.write_all(&rtu(2, &[3, 2, 0, 1])).await.expect("peer");
        tokio::task::yield_now().await;
        request(&mut gated, &rtu(2, &[3, 0, 0, 0, 1])).await;
        let awaited = rtu(2, &[3, 2, 0, 2]);
        peer.write_all(&awaited).await.expect("peer");
        let mut got = vec![0; awaited.len()];
        gated.read_exact(&mut got).await.expect("read");
        assert_eq!(got, awaited);
        assert_eq!(
            (gate.frames(), gate.dropped()),
            (2, 1),
            "the drained late answer counts as heard, and as dropped"
        );
        let mut sent = vec![0; 16];
        peer.read_exact(&mut sent).await.expect("both requests");
    }
}
