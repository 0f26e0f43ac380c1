//! The two halves of one multiplexed stream, as the handlers and the SDK see them: a
//! [`SendStream`] that turns writes into DATA frames within the stream's send window (and waits
//! for WINDOW credit or for the connection's outgoing buffer to drain), and a [`RecvStream`]
//! that hands out what the read loop queued and returns credit in half-window chunks. Both only
//! touch the session's shared state under its lock; the session's reader and writer tasks do
//! the socket I/O. Dropping a half finishes (FIN) or stops (STOP) its side.

use super::*;

/// The sending half of a stream.
pub struct SendStream {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
}

impl SendStream {
    /// Ends the stream's sending side (FIN); later writes fail.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut st = self.shared.lock();
        let State { streams, out, .. } = &mut *st;
        if let Some(s) = streams.get_mut(&self.id) {
            if !s.send_done {
                s.send_done = true;
                frame::put_fin(out, self.id);
                self.shared.wake_writer.notify_one();
            }
        }
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mux::SendStream")
            .field("id", &self.id)
            .finish()
    }
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mux::RecvStream")
            .field("id", &self.id)
            .finish()
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.shared.lock();
        if let Some(c) = &st.closed {
            return Poll::Ready(Err(closed_error(c)));
        }
        let over = st.out.len() >= OUT_HIGH;
        let State {
            streams,
            out,
            out_waiters,
            ..
        } = &mut *st;
        let Some(s) = streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if s.stopped {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer stopped reading this stream",
            )));
        }
        if s.send_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was finished",
            )));
        }
        if s.send_window == 0 {
            s.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if over {
            out_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf
            .len()
            .min(MAX_DATA)
            .min(usize::try_from(s.send_window).unwrap_or(usize::MAX));
        frame::put_data(out, self.id, &buf[..n]);
        s.send_window -= n as u64;
        drop(st);
        self.shared.wake_writer.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task sends what is queued without being asked.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish())
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.closed.is_none() {
            let State { streams, out, .. } = &mut *st;
            if let Some(s) = streams.get_mut(&self.id) {
                if !s.send_done {
                    s.send_done = true;
                    frame::put_fin(out, self.id);
                    self.shared.wake_writer.notify_one();
                }
            }
        }
        self.shared.release(&mut st, self.id);
    }
}

/// The receiving half of a stream.
pub struct RecvStream {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let closed = st.closed.clone();
        let State { streams, out, .. } = &mut *st;
        let Some(s) = streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if s.recv.is_empty() {
            if s.recv_fin {
                return Poll::Ready(Ok(()));
            }
            if let Some(c) = closed {
                return Poll::Ready(Err(closed_error(&c)));
            }
            s.recv_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let read = s.recv.len().min(buf.remaining());
        buf.put_slice(&s.recv[..read]);
        s.recv.advance(read);
        s.consumed += read as u64;
        // Credit goes back in chunks of half a window, so a steady reader never waits for it
        // and the peer does not get a WINDOW per read.
        if !s.recv_fin && s.consumed >= INITIAL_WINDOW / 2 && closed.is_none() {
            frame::put_window(out, self.id, s.consumed);
            s.recv_window += s.consumed;
            s.consumed = 0;
            self.shared.wake_writer.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let open = st.closed.is_none();
        let State { streams, out, .. } = &mut *st;
        if let Some(s) = streams.get_mut(&self.id) {
            s.recv_dropped = true;
            s.recv.clear();
            if !s.recv_fin && open {
                frame::put_stop(out, self.id, 0);
                self.shared.wake_writer.notify_one();
            }
        }
        self.shared.release(&mut st, self.id);
    }
}
