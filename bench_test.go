package chat

// Benchmarks of the hot paths: decoding a client frame, encoding a message
// once, fanning it out to a room's local members, the writer's batching, and
// the whole publish path through Redis and back.
//
//	go test -run '^$' -bench . -benchmem

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// benchText is a typical chat message: about 100 bytes, a little unicode.
const benchText = "Hey all, the deploy finished at 14:02; dashboards look green — ping me if anything looks off. Thx!"

// benchMessage is a typical relayed message as the origin instance encodes it.
func benchMessage() Message {
	return Message{
		Room:     "lobby",
		ID:       "3f9a1c2b7e4d-1k2j",
		User:     "alice",
		Text:     benchText,
		TS:       1732700000000,
		Instance: "3f9a1c2b7e4d",
		Ref:      "c-17",
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	data := []byte(`{"type":"message","room":"lobby","text":` + strconv.Quote(benchText) + `,"ref":"c-17"}`)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := decodeFrame(data)
		if err != nil || f.Text == "" {
			b.Fatalf("decodeFrame: %v %+v", err, f)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	m := benchMessage()
	buf := appendMessageFrame(nil, &m)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendMessageFrame(buf[:0], &m)
	}
}

// BenchmarkWriteBatch is the writer's assembly of one batch: 64 queued
// frames appended, with their headers, into a pooled buffer, as writeLoop
// does before its single Write.
func BenchmarkWriteBatch(b *testing.B) {
	for _, size := range []struct {
		name  string
		frame []byte
	}{
		{"typical", func() []byte { m := benchMessage(); return appendMessageFrame(nil, &m) }()},
		{"4KiB", func() []byte {
			m := benchMessage()
			m.Text = strings.Repeat("x", 4096)
			return appendMessageFrame(nil, &m)
		}()},
	} {
		b.Run(size.name, func(b *testing.B) {
			const batchLen = 64
			batch := make([][]byte, batchLen)
			for i := range batch {
				batch[i] = size.frame
			}
			b.SetBytes(int64(batchLen * len(size.frame)))
			b.ReportAllocs()
			for b.Loop() {
				bp := writeBuffers.Get().(*[]byte)
				*bp = appendBatch((*bp)[:0], false, batch, nil)
				if cap(*bp) <= maxPooledBuffer {
					writeBuffers.Put(bp)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchLen), "ns/frame")
		})
	}
}

// benchMembers are the room sizes of the fan-out benchmarks.
var benchMembers = []int{1, 10, 100, 1000}

// BenchmarkFanout is hub.deliver of one shared frame to N local members
// whose writers drain into a sink, in bursts of 64 messages: a busy room,
// where writers find several frames queued and batch them. Each burst is
// drained before the next, so no queue ever holds more than 64 frames (far
// below the default send-queue budget) and the timer stops only when every
// writer has written everything.
func BenchmarkFanout(b *testing.B) {
	for _, n := range benchMembers {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) { benchFanout(b, n, 64) })
	}
}

// BenchmarkFanoutIdle delivers one message at a time and waits until every
// writer has drained it: the usual chat room, where each message finds its
// members' writers idle.
func BenchmarkFanoutIdle(b *testing.B) {
	for _, n := range benchMembers {
		b.Run("members="+strconv.Itoa(n), func(b *testing.B) { benchFanout(b, n, 1) })
	}
}

func benchFanout(b *testing.B, members, burst int) {
	h := benchHandler()
	m := benchMessage()
	frame := appendMessageFrame(nil, &m)
	if burst*len(frame) >= h.cfg.sendQueue {
		b.Fatalf("a burst of %d would overflow the send queue (%d bytes)", burst, h.cfg.sendQueue)
	}
	const room = "lobby"
	sinks := make([]*benchSink, members)
	for i := range sinks {
		sinks[i] = &benchSink{}
		c := benchClient(h, sinks[i], "user"+strconv.Itoa(i))
		if created, _ := h.hub.join(c, room, "", joinWant{}); created {
			h.hub.subscribed(room, false) // as if Redis confirmed at once
		}
		h.hub.finishJoin(c, room, joinRead{}) // as if Redis answered at once
	}
	h.conns.Wait() // every "joined" written

	wsFrameLen := int64(len(appendFrame(nil, opText, frame)))
	var before []int64
	for _, s := range sinks {
		before = append(before, s.bytes.Load())
	}

	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.hub.deliver(room, frame)
		if (i+1)%burst == 0 {
			// All Adds (in send, on this goroutine) precede this Wait.
			h.conns.Wait()
		}
	}
	h.conns.Wait() // every writer has written everything and ended
	b.StopTimer()
	runtime.ReadMemStats(&ms1)

	for i, s := range sinks {
		if got, want := s.bytes.Load()-before[i], int64(b.N)*wsFrameLen; got != want {
			b.Fatalf("member %d: sink got %d bytes, want %d (frames lost: queue overflow or write error?)", i, got, want)
		}
	}
	deliveries := float64(b.N) * float64(members)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/deliveries, "B/delivery")
}

// benchHandler is the part of a Handler that clients and the hub use,
// without Redis.
func benchHandler() *Handler {
	h := &Handler{
		cfg:     defaultConfig(),
		id:      "bench",
		log:     slog.New(slog.DiscardHandler),
		clients: make(map[*client]struct{}),
	}
	h.hub = newHub(h.cfg.maxRooms, h.cfg.history > 0)
	return h
}

// benchClient is a real *client whose connection is sink. It has no reader
// (no x/net websocket.Conn): the benchmarks drive send and the writer only.
func benchClient(h *Handler, sink *benchSink, user string) *client {
	wire := &wireConn{Conn: sink, readTimeout: h.cfg.readTimeout, writeTimeout: h.cfg.writeTimeout}
	return newClient(h, nil, wire, user, func() {})
}

// benchSink is a net.Conn that accepts every write at once, like a socket
// with room in its send buffer. It counts bytes and, when frames is set, the
// text frames in them (a writer's Write always holds whole frames), and can
// signal when a number of text frames has arrived.
type benchSink struct {
	bytes  atomic.Int64
	frames bool
	texts  atomic.Int64
	closed atomic.Bool

	mu   sync.Mutex
	want int64
	wake chan struct{}
}

func (s *benchSink) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	s.bytes.Add(int64(len(p)))
	if !s.frames {
		return len(p), nil
	}
	var texts int64
	for rest := p; len(rest) >= 2; {
		op, n, hdr := rest[0]&0x0f, int(rest[1]&0x7f), 2
		switch n {
		case 126:
			n, hdr = int(binary.BigEndian.Uint16(rest[2:])), 4
		case 127:
			n, hdr = int(binary.BigEndian.Uint64(rest[2:])), 10
		}
		if op == opText {
			texts++
		}
		rest = rest[hdr+n:]
	}
	if got := s.texts.Add(texts); texts > 0 {
		s.mu.Lock()
		if s.wake != nil && got >= s.want {
			close(s.wake)
			s.wake = nil
		}
		s.mu.Unlock()
	}
	return len(p), nil
}

// await returns a channel closed once n text frames in all have arrived.
func (s *benchSink) await(n int64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if s.texts.Load() >= n {
		close(ch)
		return ch
	}
	s.want, s.wake = n, ch
	return ch
}

func (s *benchSink) Read([]byte) (int, error)         { return 0, io.EOF }
func (s *benchSink) Close() error                     { s.closed.Store(true); return nil }
func (s *benchSink) LocalAddr() net.Addr              { return benchAddr{} }
func (s *benchSink) RemoteAddr() net.Addr             { return benchAddr{} }
func (s *benchSink) SetDeadline(time.Time) error      { return nil }
func (s *benchSink) SetReadDeadline(time.Time) error  { return nil }
func (s *benchSink) SetWriteDeadline(time.Time) error { return nil }

type benchAddr struct{}

func (benchAddr) Network() string { return "bench" }
func (benchAddr) String() string  { return "bench" }

// BenchmarkPublishPath is Handler.Publish end to end: the message is
// encoded, goes through the publish script to Redis, comes back on the
// instance's subscription, and the hub queues it for the room's one local
// member, whose writer writes it. The timer stops when the member has
// written every message. "serial" is one publisher (each Publish waits for
// its Redis round trip); "parallel" is 4 publishers per CPU.
func BenchmarkPublishPath(b *testing.B) {
	b.Run("miniredis", func(b *testing.B) {
		mr := miniredis.RunT(b)
		benchPublishPath(b, mr.Addr())
	})
	b.Run("redis-server", func(b *testing.B) {
		rs := redistest.Start(b) // skips where redis-server is missing
		benchPublishPath(b, rs.Addr)
	})
}

func benchPublishPath(b *testing.B, addr string) {
	pub := redis.NewClient(&redis.Options{Addr: addr})
	sub := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() { _ = pub.Close(); _ = sub.Close() })
	// A deep queue: Redis may relay a burst faster than one writer turn.
	h := New(pub, sub, WithLogger(slog.New(slog.DiscardHandler)), WithInstanceID("bench"), WithSendQueue(64<<20))
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			b.Errorf("Shutdown: %v", err)
		}
	})
	const room = "bench"
	sink := &benchSink{frames: true}
	c := benchClient(h, sink, "member")
	h.join(c, room, "", joinWant{}) // subscribes; "joined" once Redis confirms and answers
	benchAwait(b, sink, 1, c)

	run := func(b *testing.B, publish func(ctx context.Context) error, parallel bool) {
		ctx := context.Background()
		base := sink.texts.Load()
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := publish(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		} else {
			for i := 0; i < b.N; i++ {
				if err := publish(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		if b.Failed() {
			return
		}
		benchAwait(b, sink, base+int64(b.N), c)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	}
	publish := func(ctx context.Context) error { return h.Publish(ctx, room, "alice", benchText) }
	b.Run("serial", func(b *testing.B) { run(b, publish, false) })
	b.Run("parallel", func(b *testing.B) { run(b, publish, true) })
}

// benchAwait waits until sink has received n text frames in all.
func benchAwait(b *testing.B, sink *benchSink, n int64, c *client) {
	b.Helper()
	select {
	case <-sink.await(n):
	case <-time.After(30 * time.Second):
		err := errors.New("timeout")
		if c.isClosing() {
			err = errors.New("the member was closed (send queue overflow?)")
		}
		b.Fatalf("member received %d of %d text frames: %v", sink.texts.Load(), n, err)
	}
}
