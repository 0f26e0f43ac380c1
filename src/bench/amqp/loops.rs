//! The three tasks of one bench case: the publisher (confirm window, optional rate), the confirm
//! reader (confirm latency, broker-initiated closes) and the consumer (manual acks with
//! `multiple`, end-to-end latency from the send time stamped into each body).

use super::*;

/// Writes messages while the confirm window has room, until `--messages` or `--duration`, then
/// waits for the last confirms. Returns how many messages were written.
pub(super) async fn publish_loop(
    ctx: &Ctx,
    shared: &Shared,
    write: &mut WriteStream,
    queue: &str,
    size: usize,
    frame_max: usize,
) -> Result<u64, BenchError> {
    let props = basic::AMQPProperties::default().with_delivery_mode(delivery_mode(&ctx.args));
    let template = PublishTemplate::new(CH, queue, props, size, frame_max)?;
    let mut body = filler(size);
    let window = shared.window;
    let limit = ctx.args.messages.unwrap_or(u64::MAX);
    let duration = match (ctx.args.duration, ctx.args.messages) {
        (Some(d), _) => Some(d),
        (None, None) => Some(DEFAULT_SECS),
        (None, Some(_)) => None,
    };
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    // Large windows of large messages are written in slices of about 1 MiB.
    let per_write = ((1 << 20) / template.wire_len()).clamp(1, window as usize) as u64;
    let mut buf = BytesMut::with_capacity(per_write as usize * template.wire_len());
    let mut tag = 0u64;
    let no_consumer = ctx.args.no_consumer;
    let started = Instant::now();
    let stalled = |what: &str| {
        BenchError::Failed(format!(
            "no publisher confirm for {} s {what} — the broker is stuck or overloaded (or \
             blocked publishers on a memory/disk alarm); check its log or retry with a larger \
             --timeout",
            ctx.timeout.as_secs()
        ))
    };
    loop {
        if shared.aborted.load(Ordering::Acquire) {
            return Ok(tag);
        }
        if tag >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let base = shared.confirmed.load(Ordering::Acquire);
        let room = window - (tag - base);
        if room == 0 {
            tokio::time::timeout(ctx.timeout, shared.room.notified())
                .await
                .map_err(|_| stalled("while publishing"))?;
            continue;
        }
        let mut n = room.min(limit - tag).min(per_write);
        if let Some(rate) = ctx.args.rate {
            // Messages due by now at `rate`, counting the first as due at once.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            if due <= tag {
                let next = started + Duration::from_secs_f64(tag as f64 / rate as f64);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            n = n.min(due - tag);
        }
        buf.clear();
        // One stamp per write: the messages leave together, in one write.
        let now = shared.now();
        body[..STAMP_LEN].copy_from_slice(&now.to_le_bytes());
        for _ in 0..n {
            tag += 1;
            shared.sent_at[(tag % window) as usize].store(now, Ordering::Relaxed);
            template.append(&body, &mut buf);
        }
        write
            .write_all(&buf)
            .await
            .map_err(|e| ClientError::Closed {
                addr: ctx.uri.authority.host.clone(),
                api: "basic.publish".into(),
                reason: e.to_string(),
            })?;
        if no_consumer {
            shared.progress.store(base, Ordering::Relaxed);
        }
    }
    while shared.confirmed.load(Ordering::Acquire) < tag {
        if shared.aborted.load(Ordering::Acquire) {
            return Ok(tag);
        }
        tokio::time::timeout(ctx.timeout, shared.room.notified())
            .await
            .map_err(|_| stalled("for the last messages"))?;
    }
    Ok(tag)
}

/// A broker-initiated close or cancel seen in the measured phase, as an error.
pub(super) fn broker_event(method: &AMQPClass) -> Option<BenchError> {
    let (what, code, text) = match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
            ("connection", c.reply_code, c.reply_text.as_str())
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            ("channel", c.reply_code, c.reply_text.as_str())
        }
        AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {
            return Some(BenchError::Failed(
                "the broker cancelled the bench consumer (was the queue deleted?)".into(),
            ))
        }
        _ => return None,
    };
    Some(BenchError::Failed(format!(
        "the broker closed the {what} during the run: {code} {text}"
    )))
}

pub(super) fn read_error(e: std::io::Error, during: &str) -> BenchError {
    BenchError::from(ClientError::Closed {
        addr: "the broker".into(),
        api: during.into(),
        reason: e.to_string(),
    })
}

/// Reads publisher confirms until told to stop, advancing `Shared::confirmed`.
pub(super) async fn confirm_loop(
    io: &mut (ReadStream, BytesMut),
    frame_max: usize,
    shared: &Shared,
    mut stop: oneshot::Receiver<()>,
) -> Result<Confirms, BenchError> {
    let (read, rbuf) = io;
    let window = shared.window;
    let mut base = shared.confirmed.load(Ordering::Acquire);
    // Tags confirmed singly ahead of `base` (brokers may confirm out of order).
    let mut ahead = BTreeSet::new();
    let mut out = Confirms {
        nacked: 0,
        latencies: Vec::with_capacity(1 << 16),
    };
    loop {
        let now = shared.now();
        let before = base;
        while let Some(frame) =
            next_frame(rbuf, frame_max).map_err(|detail| ClientError::Protocol {
                addr: "the broker".into(),
                api: "publisher confirms".into(),
                detail,
            })?
        {
            let Frame::Method(_, method) = frame else {
                continue;
            };
            let (tag, multiple, nack) = match *method {
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => (a.delivery_tag, a.multiple, false),
                AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => (n.delivery_tag, n.multiple, true),
                ref other => match broker_event(other) {
                    Some(e) => return Err(e),
                    None => continue,
                },
            };
            let confirm = |t: u64, out: &mut Confirms| {
                if nack {
                    out.nacked += 1;
                } else {
                    let sent = shared.sent_at[(t % window) as usize].load(Ordering::Relaxed);
                    out.latencies.push(now.saturating_sub(sent));
                }
            };
            if multiple {
                for t in base + 1..=tag {
                    if !ahead.remove(&t) {
                        confirm(t, &mut out);
                    }
                }
                base = base.max(tag);
            } else if tag > base && ahead.insert(tag) {
                confirm(tag, &mut out);
                while ahead.remove(&(base + 1)) {
                    base += 1;
                }
            }
        }
        if base != before {
            shared.confirmed.store(base, Ordering::Release);
            shared.room.notify_one();
        }
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(out),
            r = read.read_buf(rbuf) => match r {
                Ok(0) => return Err(read_error(std::io::ErrorKind::UnexpectedEof.into(), "publishing")),
                Ok(_) => {}
                Err(e) => return Err(read_error(e, "publishing")),
            },
        }
    }
}

/// Receives deliveries, measures their latency and acknowledges them in batches, until it has
/// seen `Shared::target` messages.
pub(super) async fn consume_loop(
    io: &mut (ReadStream, WriteStream, BytesMut),
    frame_max: usize,
    shared: &Shared,
    prefetch: u16,
    timeout: Duration,
) -> Result<Consumed, BenchError> {
    let (read, write, rbuf) = io;
    let ack_every = u64::from(prefetch / 2).max(1);
    let mut acks = BytesMut::with_capacity(256);
    let mut out = Consumed {
        messages: 0,
        latencies: Vec::with_capacity(1 << 16),
        last_at: 0,
    };
    // The delivery whose content is arriving: its tag, body bytes still expected, and whether
    // its stamp was read.
    let mut tag = 0u64;
    let mut left = 0u64;
    let mut stamped = true;
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    loop {
        let now = shared.now();
        let before = out.messages;
        while let Some(frame) =
            next_frame(rbuf, frame_max).map_err(|detail| ClientError::Protocol {
                addr: "the broker".into(),
                api: "deliveries".into(),
                detail,
            })?
        {
            let complete = match frame {
                Frame::Method(_, method) => match *method {
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                        tag = d.delivery_tag;
                        stamped = false;
                        false
                    }
                    ref other => match broker_event(other) {
                        Some(e) => return Err(e),
                        None => false,
                    },
                },
                Frame::Header(size) => {
                    left = size;
                    size == 0
                }
                Frame::Body(body) => {
                    if !stamped && body.len() >= STAMP_LEN {
                        let mut stamp = [0u8; STAMP_LEN];
                        stamp.copy_from_slice(&body[..STAMP_LEN]);
                        out.latencies
                            .push(now.saturating_sub(u64::from_le_bytes(stamp)));
                        stamped = true;
                    }
                    left = left.saturating_sub(body.len() as u64);
                    left == 0
                }
                Frame::Heartbeat => false,
            };
            if complete {
                out.messages += 1;
                last_tag = tag;
                unacked += 1;
                if unacked >= ack_every {
                    encode_ack(CH, last_tag, &mut acks)?;
                    unacked = 0;
                }
            }
        }
        if out.messages != before {
            out.last_at = now;
            shared.progress.store(out.messages, Ordering::Relaxed);
        }
        // Whatever this read completed is acknowledged now, so the broker's prefetch window
        // never waits on an ack the next read would have sent.
        if unacked > 0 {
            encode_ack(CH, last_tag, &mut acks)?;
            unacked = 0;
        }
        if !acks.is_empty() {
            write
                .write_all(&acks)
                .await
                .map_err(|e| read_error(e, "acknowledging"))?;
            acks.clear();
        }
        if out.messages >= shared.target.load(Ordering::Acquire) {
            return Ok(out);
        }
        if shared.aborted.load(Ordering::Acquire) {
            return Err(BenchError::Failed("the publisher failed".into()));
        }
        tokio::select! {
            biased;
            r = read.read_buf(rbuf) => match r {
                Ok(0) => return Err(read_error(std::io::ErrorKind::UnexpectedEof.into(), "consuming")),
                Ok(_) => {}
                Err(e) => return Err(read_error(e, "consuming")),
            },
            _ = shared.target_set.notified() => {}
            _ = tokio::time::sleep(timeout) => {
                let target = shared.target.load(Ordering::Acquire);
                return Err(BenchError::Failed(format!(
                    "no delivery for {} s with {} of {} messages consumed — the broker stopped \
                     delivering; check its log or retry with a larger --timeout",
                    timeout.as_secs(),
                    out.messages,
                    if target == u64::MAX { "?".to_string() } else { target.to_string() },
                )));
            }
        }
    }
}
