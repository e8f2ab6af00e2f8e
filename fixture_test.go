package chat

// The chat-specific test fixture: Redis backends, chat instances on httptest
// servers, polling and the goroutine-leak check. Generic test doubles (the
// WebSocket client, redis-server, the TCP proxy, the demo process) live in
// internal/.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/demotest"
	"github.com/chatrelay/chat/internal/redistest"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// TestMain removes the demo binary the load test builds.
func TestMain(m *testing.M) { demotest.Main(m) }

// wait is the generous bound for anything that should happen "at once".
const wait = 5 * time.Second

// backend is a Redis the behaviour tests run against.
type backend struct {
	addr string
	mr   *miniredis.Miniredis // set for the embedded one
	real *redistest.Server    // set for a real redis-server
}

// forEachRedis runs fn against miniredis and against a real redis-server
// that the test starts itself (skipped where the binary is missing, a
// failure when CHAT_REQUIRE_REDIS=1).
func forEachRedis(t *testing.T, fn func(t *testing.T, be *backend)) {
	t.Run("miniredis", func(t *testing.T) { fn(t, miniBackend(t)) })
	t.Run("redis", func(t *testing.T) { fn(t, realRedis(t)) })
}

// miniBackend is an embedded miniredis, for behaviours that do not depend on
// the server.
func miniBackend(t *testing.T) *backend {
	mr := miniredis.RunT(t)
	return &backend{addr: mr.Addr(), mr: mr}
}

// realRedis is for behaviours only a real server can show (faults,
// timing); args go to redis-server (see redistest.Start).
func realRedis(t *testing.T, args ...string) *backend {
	rs := redistest.Start(t, args...)
	return &backend{addr: rs.Addr, real: rs}
}

func (be *backend) client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: be.addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// instance is one chat server: a Handler on its own httptest server, with its
// own pair of Redis clients, as in production.
type instance struct {
	h   *Handler
	srv *httptest.Server
	url string // ws://127.0.0.1:port/chat
}

func newInstance(t testing.TB, be *backend, opts ...Option) *instance {
	t.Helper()
	return newInstanceWith(t, be.client(t), be.client(t), opts...)
}

func newInstanceWith(t testing.TB, pub, sub redis.UniversalClient, opts ...Option) *instance {
	t.Helper()
	opts = append([]Option{WithLogger(testLogger(t))}, opts...)
	h := New(pub, sub, opts...)
	mux := http.NewServeMux()
	mux.Handle("/chat", h)
	srv := httptest.NewServer(mux)
	in := &instance{h: h, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/chat"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return in
}

// connect dials the instance with query (e.g. "room=a&user=bob") and waits
// for a "joined" for every room in it.
func (in *instance) connect(t testing.TB, query string) *wstest.Conn {
	t.Helper()
	c := wstest.MustDial(t, in.url+"?"+query, nil)
	pending := map[string]bool{}
	for _, kv := range strings.Split(query, "&") {
		if room, ok := strings.CutPrefix(kv, "room="); ok {
			pending[room] = true
		}
	}
	for len(pending) > 0 { // rooms may be confirmed in any order
		delete(pending, str(c.Next(t, "joined", wait)["room"]))
	}
	c.Skipped = nil
	return c
}

// clientCount is how many connections the Handler serves.
func (in *instance) clientCount() int {
	in.h.mu.Lock()
	defer in.h.mu.Unlock()
	return len(in.h.clients)
}

// eventually polls cond until it holds or d passes. It waits for a
// condition, it does not stand in for a signal the code does not have.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// packageGoroutines lists the stacks of running goroutines that are inside
// the package's own (non-test) code: its files in this directory, not the
// test doubles under internal/.
func packageGoroutines() []string {
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Dir(self) + "/"
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			line = strings.TrimSpace(line)
			file, ok := strings.CutPrefix(line, dir)
			if ok && !strings.Contains(file, "/") && !strings.Contains(file, "_test.go:") {
				ours = append(ours, g)
				break
			}
		}
	}
	return ours
}

// noGoroutinesLeft fails unless every goroutine of the package has ended
// (allowing a moment for ones that are returning).
func noGoroutinesLeft(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := packageGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutine(s) of the package still running:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testLogger sends the package's logs to the test log, so they show up with
// a failing test and stay quiet otherwise.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	defer func() { recover() }() // a log line after the test ended is dropped
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func msgFrame(room, text, ref string) map[string]any {
	f := map[string]any{"type": "message", "room": room, "text": text}
	if ref != "" {
		f["ref"] = ref
	}
	return f
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func str(v any) string { return fmt.Sprint(v) }

// syncBuffer is a bytes.Buffer that a logger may write to from any
// goroutine while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
