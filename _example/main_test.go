package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/demotest"
	"github.com/redis/go-redis/v9"
)

// A -redis that cannot be reached stops the demo at start, with exit
// status 1, instead of serving a chat that cannot relay.
func TestUnreachableRedisFailsFast(t *testing.T) {
	dead := demotest.FreeAddr(t) // nothing listens there
	start := time.Now()
	if code := cli(context.Background(), []string{"-addr", "127.0.0.1:0", "-redis", "redis://" + dead}, io.Discard, nil); code != 1 {
		t.Fatalf("run with an unreachable Redis returned %d, want 1", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to give up, want a few seconds at most", took)
	}
}

// The demo's server bounds what a request may make it hold: a header of
// 64 KiB is refused (431) rather than buffered, which is what kept 1,000
// connections with unfinished 1 MiB headers from taking gigabytes.
func TestLargeHeaderRefused(t *testing.T) {
	in := serveTestInstance(t, settings{maxConns: 10})
	req, _ := http.NewRequest("GET", in.url+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: status %d, want 431", resp.StatusCode)
	}
}

// Without -addr the demo listens on loopback only: what people copy must
// not open a chat to the network by accident.
func TestListensOnLoopbackByDefault(t *testing.T) {
	for _, embedded := range []bool{true, false} {
		for _, addr := range strings.Split(defaultAddrs(embedded), ",") {
			host, _, err := net.SplitHostPort(addr)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				t.Errorf("default address %q (embedded Redis: %v) is not loopback", addr, embedded)
			}
		}
	}
}

// serveTestInstance serves one demo instance on an embedded Redis and a
// free loopback port until the test ends.
func serveTestInstance(t *testing.T, set settings) *instance {
	t.Helper()
	mr := miniredis.RunT(t)
	in, err := newInstance("127.0.0.1:0", &backend{opt: &redis.Options{Addr: mr.Addr()}}, set, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go in.srv.Serve(in.ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		in.shutdown(ctx)
		in.pub.Close()
		in.sub.Close()
	})
	return in
}
