package chat

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

// The server answers a client's close frame with a close frame.
func TestClientCloseIsAnswered(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=bye&user=polite")
	must(t, c.SendClose(1000, "bye"))
	if code := c.ExpectClose(t, wait); code != 1000 {
		t.Fatalf("close reply code %d, want 1000", code)
	}
	eventually(t, wait, "connection still registered", func() bool { return in.clientCount() == 0 })
}

// Server pings keep a responsive client connected; a peer that sends
// nothing, not even pongs, is dropped after the read timeout.
func TestKeepalive(t *testing.T) {
	// Margins for a loaded 2-core machine: the responsive client has a
	// second to answer a ping that comes every 100 ms.
	const ping, read = 100 * time.Millisecond, time.Second
	in := newInstance(t, miniBackend(t), WithTimeouts(ping, read, time.Second))
	alive := in.connect(t, "room=ka&user=alive")
	start := time.Now() // before anything the server reads from the silent client
	silent := in.connect(t, "room=ka&user=silent")
	silent.NoPong = true

	// The responsive client answers pings (readJSON does) for 3 read
	// timeouts, on its own goroutine.
	aliveErr := make(chan error, 1)
	go func() {
		end := time.Now().Add(3 * read)
		for time.Now().Before(end) {
			if _, err := alive.ReadJSON(read / 4); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				aliveErr <- err
				return
			}
		}
		aliveErr <- nil
	}()

	pings := 0
	for {
		op, _, err := silent.ReadFrame(2 * read)
		if err != nil {
			break // dropped
		}
		if op == wstest.OpPing {
			pings++
		}
	}
	if d := time.Since(start); d < read || d > read+2*time.Second {
		t.Errorf("silent client dropped after %v, want about %v", d, read)
	}
	if pings == 0 {
		t.Error("silent client was never pinged")
	}
	if err := <-aliveErr; err != nil {
		t.Fatalf("responsive client dropped: %v", err)
	}
	must(t, alive.SendJSON(msgFrame("ka", "still here", "")))
	alive.Next(t, "message", wait)
}

// A client that stops reading is closed (1013, best effort) once its queue
// is full, and never delays the others.
func TestSlowClientIsClosed(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		other := newInstance(t, be)
		// The slow client's socket buffers are small, but the server's send
		// buffer can hold 4 MiB and its queue 1 MiB: 8 MB of messages
		// are more than all of that.
		slow, status, err := wstest.DialWithReadBuffer(t, in.url+"?room=flood&user=slow", nil, 4096)
		if status != 101 {
			t.Fatalf("dial slow: %d %v", status, err)
		}
		slow.Next(t, "joined", wait)
		readers := []*wstest.Conn{in.connect(t, "room=flood&user=local"), other.connect(t, "room=flood&user=remote")}

		const n, batch = 2000, 20
		text := strings.Repeat("x", 4000)
		start := time.Now()
		// Readers acknowledge each batch, so the publisher never outruns
		// them: they are fast clients, however slow the machine.
		acks := make(chan error, 2*len(readers))
		for _, c := range readers {
			go func() {
				for i := 0; i < n; i++ {
					m, err := c.ReadJSON(10 * time.Second)
					if err == nil && m["text"] != text {
						err = fmt.Errorf("message %d: %.80v", i, m)
					}
					if err != nil {
						acks <- err
						return
					}
					if (i+1)%batch == 0 {
						acks <- nil
					}
				}
			}()
		}
		ctx := context.Background()
		for i := 0; i < n; i++ {
			must(t, other.h.Publish(ctx, "flood", "server", text))
			if (i+1)%batch == 0 {
				for range readers {
					must(t, <-acks)
				}
			}
		}
		t.Logf("%d messages of %d bytes reached both readers in %v while one client did not read", n, len(text), time.Since(start))
		eventually(t, wait, "slow client still connected", func() bool { return in.clientCount() == 1 })
		if got := in.h.Stats().Dropped.SlowClients; got != 1 {
			t.Errorf("Stats().Dropped.SlowClients = %d, want 1", got)
		}
		// Reading now, the slow client finds the end of its connection: the
		// 1013 close if it fitted in the socket buffers, else a dropped TCP.
		if code := slow.ExpectClose(t, 10*time.Second); code != 1013 && code != 1006 {
			t.Fatalf("slow client close code %d, want 1013 (or 1006)", code)
		}
	})
}

// The send queue is a byte budget: a client whose writer is stuck keeps
// every frame that fits in it, however many (v1 closed it after 256), and
// is closed with 1013 by the first frame that would not fit.
func TestSendQueueIsAByteBudget(t *testing.T) {
	h := benchHandler()
	h.cfg.sendQueue = 64 << 10
	conn := &stuckConn{writing: make(chan struct{}), release: make(chan struct{})}
	c := newClient(h, nil, &wireConn{Conn: conn, readTimeout: time.Minute, writeTimeout: time.Minute}, "slow", func() {})
	frame := bytes.Repeat([]byte("x"), 50)

	c.send(frame) // the writer takes it and blocks in Write
	<-conn.writing
	fits := h.cfg.sendQueue / len(frame) // 1,310 frames: far more than 256
	for range fits {
		c.send(frame)
	}
	if c.isClosing() {
		t.Fatalf("closed with %d frames (%d bytes) queued, within the %d-byte budget", fits, fits*len(frame), h.cfg.sendQueue)
	}
	c.send(frame)
	if !c.isClosing() {
		t.Fatalf("still open with %d bytes queued, over the %d-byte budget", (fits+1)*len(frame), h.cfg.sendQueue)
	}
	if got := h.Stats().Dropped.SlowClients; got != 1 {
		t.Errorf("Stats().Dropped.SlowClients = %d, want 1", got)
	}
	close(conn.release)
	h.conns.Wait() // the writer sends the close frame and ends
	if code := binary.BigEndian.Uint16(conn.last[2:]); conn.last[0]&0x0f != opClose || code != closeTryLater {
		t.Errorf("last write % x, want a close frame with 1013", conn.last[:min(len(conn.last), 8)])
	}
}

// stuckConn is a connection whose first Write blocks until release is
// closed, like a peer that stopped reading with full socket buffers.
type stuckConn struct {
	benchSink
	writing chan struct{}
	release chan struct{}
	once    sync.Once
	last    []byte // the last write, once released
}

func (s *stuckConn) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.writing) })
	<-s.release
	s.last = append(s.last[:0], p...)
	return len(p), nil
}

// fragmentsOf is payload as text fragments of n bytes each (the last may be
// shorter), encoded back to back.
func fragmentsOf(payload []byte, n int) []byte {
	var out []byte
	for i := 0; i < len(payload); i += n {
		op := wstest.OpContinuation
		if i == 0 {
			op = wstest.OpText
		}
		end := min(i+n, len(payload))
		out = append(out, wstest.EncodeFrame(op, payload[i:end], end == len(payload), wstest.FrameOptions{})...)
	}
	return out
}

func chopBytes(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	must(t, err)
	return b
}
