package chat

// Tests of the test helpers themselves: go test -race -run Helper .

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/websocket"
)

func TestHelperProxyFreeze(t *testing.T) {
	mr := miniredis.RunT(t)
	p := startTCPProxy(t, mr.Addr())
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
	if _, err := raw.Read(buf); err == nil || errors.Is(err, net.ErrClosed) || tcIsTimeout(err) {
		t.Fatalf("read after DropAll: want EOF/reset, got %v", err)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Logf("first PING after DropAll (stale pooled conn): %v", err)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING on a new conn after DropAll: %v", err)
	}
}

func tcIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestHelperRedisKillRestart(t *testing.T) {
	s := startRedisServer(t)
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

// tcEchoServer serves x/net/websocket echo handlers at /open (any origin)
// and /strict (Origin required) and returns the ws:// base URL. "close:1013"
// makes it send close 1013 "busy"; "ping" sends a ping, then a text frame.
func tcEchoServer(t *testing.T) string {
	closeCodec := websocket.Codec{Marshal: func(v any) ([]byte, byte, error) { return v.([]byte), websocket.CloseFrame, nil }}
	pingCodec := websocket.Codec{Marshal: func(v any) ([]byte, byte, error) { return v.([]byte), websocket.PingFrame, nil }}
	echo := func(ws *websocket.Conn) {
		for {
			var s string
			if err := websocket.Message.Receive(ws, &s); err != nil {
				return // TCP closed without a close frame
			}
			switch {
			case s == "ping":
				_ = pingCodec.Send(ws, []byte("srv"))
				_ = websocket.Message.Send(ws, `{"type":"after-ping"}`)
			case strings.HasPrefix(s, "close:"):
				_ = closeCodec.Send(ws, append(binary.BigEndian.AppendUint16(nil, 1013), "busy"...))
				return
			default:
				_ = websocket.Message.Send(ws, s)
			}
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/open", websocket.Server{Handler: echo})
	mux.Handle("/strict", websocket.Handler(echo)) // rejects a missing Origin with 403
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func TestHelperWSClient(t *testing.T) {
	base := tcEchoServer(t)

	c := mustDialWS(t, base+"/open?room=a&user=bob")
	if err := c.sendJSON(map[string]any{"type": "echo", "n": 1}); err != nil {
		t.Fatal(err)
	}
	if m := c.next(t, "echo", 5*time.Second); m["n"] != float64(1) {
		t.Fatalf("echo = %v", m)
	}
	// 16-bit and 64-bit payload lengths in both directions; other types skipped.
	for _, n := range []int{200, 70000} {
		_ = c.sendText(`{"type":"skip"}`)
		big := `{"type":"big","pad":"` + strings.Repeat("x", n) + `"}`
		if err := c.sendText(big); err != nil {
			t.Fatal(err)
		}
		if m := c.next(t, "big", 5*time.Second); len(m["pad"].(string)) != n {
			t.Fatalf("big echo: pad length %d, want %d", len(m["pad"].(string)), n)
		}
	}
	if len(c.skipped) != 2 || c.skipped[0]["type"] != "skip" {
		t.Fatalf("skipped = %v", c.skipped)
	}
	// A server ping is answered and skipped; with noPong it is returned.
	_ = c.sendText("ping")
	c.next(t, "after-ping", 5*time.Second)
	c.noPong = true
	_ = c.sendText("ping")
	if op, p, err := c.readFrame(5 * time.Second); err != nil || op != 0x9 || string(p) != "srv" {
		t.Fatalf("readFrame = %#x %q %v, want ping", op, p, err)
	}
	c.noPong = false
	c.next(t, "after-ping", 5*time.Second)
	// A timeout leaves the connection usable.
	if _, err := c.readJSON(50 * time.Millisecond); !tcIsTimeout(err) {
		t.Fatalf("readJSON on idle conn: %v, want timeout", err)
	}
	_ = c.sendText(`{"type":"late"}`)
	c.next(t, "late", 5*time.Second)
	// A close frame with its code, via readJSON and expectClose.
	_ = c.sendText("close:1013")
	var ce *closeError
	if _, err := c.readJSON(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1013 || ce.Reason != "busy" {
		t.Fatalf("readJSON: %v, want closeError 1013", err)
	}
	c2 := mustDialWS(t, base+"/open")
	_ = c2.sendText("close:1013")
	if code := c2.expectClose(t, 5*time.Second); code != 1013 || c2.closeReason != "busy" {
		t.Fatalf("expectClose = %d %q", code, c2.closeReason)
	}
	// x/net does not answer a client close: TCP just ends, which is 1006.
	c3, status, err := dialWSWith(t, base+"/open", nil, 4096)
	if err != nil || status != 101 {
		t.Fatalf("dialWSWith: %d %v", status, err)
	}
	_ = c3.sendClose(1000, "bye")
	if code := c3.expectClose(t, 5*time.Second); code != 1006 {
		t.Fatalf("expectClose after client close = %d, want 1006", code)
	}
	// Non-101 answers give the status and a nil client.
	if c4, status, err := dialWS(t, base+"/strict", nil); c4 != nil || status != 403 || err == nil {
		t.Fatalf("dialWS /strict without Origin: %v %d %v", c4, status, err)
	}
	c5, status, err := dialWS(t, base+"/strict", http.Header{"Origin": {"http://localhost"}})
	if err != nil || status != 101 {
		t.Fatalf("dialWS /strict with Origin: %d %v", status, err)
	}
	_ = c5.sendText(`{"type":"o"}`)
	c5.next(t, "o", 5*time.Second)
}
