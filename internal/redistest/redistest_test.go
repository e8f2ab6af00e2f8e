package redistest_test

import (
	"context"
	"testing"

	"github.com/chatrelay/chat/internal/redistest"
)

// Kill stops the server, Restart brings it back on the same address with
// no data.
func TestKillRestart(t *testing.T) {
	s := redistest.Start(t)
	addr := s.Addr
	rc := s.Client(t)
	ctx := context.Background()
	if err := rc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Kill(t)
	if err := rc.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded after Kill")
	}
	s.Restart(t)
	if s.Addr != addr {
		t.Fatalf("Addr changed: %s -> %s", addr, s.Addr)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if n, err := rc.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS k after restart = %d, %v; want 0 (no persistence)", n, err)
	}
}

// Extra arguments reach the server: DEBUG is refused unless enabled.
func TestStartArgs(t *testing.T) {
	ctx := context.Background()
	if err := redistest.Start(t).Client(t).Do(ctx, "DEBUG", "SLEEP", "0").Err(); err == nil {
		t.Fatal("DEBUG SLEEP 0 succeeded on a server started without --enable-debug-command")
	}
	rc := redistest.Start(t, "--enable-debug-command", "local").Client(t)
	if err := rc.Do(ctx, "DEBUG", "SLEEP", "0").Err(); err != nil {
		t.Fatalf("DEBUG SLEEP 0 with --enable-debug-command local: %v", err)
	}
}
