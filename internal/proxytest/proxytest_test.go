package proxytest_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/chatrelay/chat/internal/proxytest"
	"github.com/redis/go-redis/v9"
)

// Freeze holds a PING until Unfreeze; DropAll resets current connections
// and new ones still work.
func TestFreezeAndDropAll(t *testing.T) {
	mr := miniredis.RunT(t)
	p := proxytest.Start(t, mr.Addr())
	rc := redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1, ReadTimeout: 20 * time.Second, PoolSize: 1})
	t.Cleanup(func() { _ = rc.Close() })
	ctx := context.Background()
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping through proxy: %v", err)
	}

	p.Freeze()
	res := make(chan error, 1)
	go func() { res <- rc.Ping(ctx).Err() }()
	select {
	case err := <-res:
		t.Fatalf("PING answered while frozen: %v", err)
	case <-time.After(300 * time.Millisecond): // bounded check that nothing arrives
	}
	p.Unfreeze()
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("PING after Unfreeze: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PING not answered within 5s of Unfreeze")
	}

	// DropAll ends current connections; a new one still works.
	raw, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "+PONG") {
		t.Fatalf("raw PING via proxy: %q %v", buf[:n], err)
	}
	p.DropAll()
	if _, err := raw.Read(buf); err == nil || errors.Is(err, net.ErrClosed) || isTimeout(err) {
		t.Fatalf("read after DropAll: want EOF/reset, got %v", err)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Logf("first PING after DropAll (stale pooled conn): %v", err)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING on a new conn after DropAll: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
