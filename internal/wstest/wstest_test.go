package wstest_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
	"golang.org/x/net/websocket"
)

// echoServer serves x/net/websocket echo handlers at /open (any origin)
// and /strict (Origin required) and returns the ws:// base URL. "close:1013"
// makes it send close 1013 "busy"; "ping" sends a ping, then a text frame.
func echoServer(t *testing.T) string {
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

// TestConn runs the client against x/net/websocket: frame sizes, skipping,
// pings, timeouts, close codes and refused handshakes.
func TestConn(t *testing.T) {
	base := echoServer(t)

	c := wstest.MustDial(t, base+"/open?room=a&user=bob", nil)
	if err := c.SendJSON(map[string]any{"type": "echo", "n": 1}); err != nil {
		t.Fatal(err)
	}
	if m := c.Next(t, "echo", 5*time.Second); m["n"] != float64(1) {
		t.Fatalf("echo = %v", m)
	}
	// 16-bit and 64-bit payload lengths in both directions; other types skipped.
	for _, n := range []int{200, 70000} {
		_ = c.SendText(`{"type":"skip"}`)
		big := `{"type":"big","pad":"` + strings.Repeat("x", n) + `"}`
		if err := c.SendText(big); err != nil {
			t.Fatal(err)
		}
		if m := c.Next(t, "big", 5*time.Second); len(m["pad"].(string)) != n {
			t.Fatalf("big echo: pad length %d, want %d", len(m["pad"].(string)), n)
		}
	}
	if len(c.Skipped) != 2 || c.Skipped[0]["type"] != "skip" {
		t.Fatalf("skipped = %v", c.Skipped)
	}
	// A server ping is answered and skipped; with NoPong it is returned.
	_ = c.SendText("ping")
	c.Next(t, "after-ping", 5*time.Second)
	c.NoPong = true
	_ = c.SendText("ping")
	if op, p, err := c.ReadFrame(5 * time.Second); err != nil || op != wstest.OpPing || string(p) != "srv" {
		t.Fatalf("ReadFrame = %#x %q %v, want ping", op, p, err)
	}
	c.NoPong = false
	c.Next(t, "after-ping", 5*time.Second)
	// A timeout leaves the connection usable.
	if _, err := c.ReadJSON(50 * time.Millisecond); !isTimeout(err) {
		t.Fatalf("ReadJSON on idle conn: %v, want timeout", err)
	}
	_ = c.SendText(`{"type":"late"}`)
	c.Next(t, "late", 5*time.Second)
	// A close frame with its code, via ReadJSON and ExpectClose.
	_ = c.SendText("close:1013")
	var ce *wstest.CloseError
	if _, err := c.ReadJSON(5 * time.Second); !errors.As(err, &ce) || ce.Code != 1013 || ce.Reason != "busy" {
		t.Fatalf("ReadJSON: %v, want CloseError 1013", err)
	}
	c2 := wstest.MustDial(t, base+"/open", nil)
	_ = c2.SendText("close:1013")
	if code := c2.ExpectClose(t, 5*time.Second); code != 1013 || c2.CloseReason != "busy" {
		t.Fatalf("ExpectClose = %d %q", code, c2.CloseReason)
	}
	// x/net does not answer a client close: TCP just ends, which is 1006.
	c3, status, err := wstest.DialWithReadBuffer(t, base+"/open", nil, 4096)
	if err != nil || status != 101 {
		t.Fatalf("DialWithReadBuffer: %d %v", status, err)
	}
	_ = c3.SendClose(1000, "bye")
	if code := c3.ExpectClose(t, 5*time.Second); code != 1006 {
		t.Fatalf("ExpectClose after client close = %d, want 1006", code)
	}
	// Non-101 answers give the status and a nil client.
	if c4, status, err := wstest.Dial(t, base+"/strict", nil); c4 != nil || status != 403 || err == nil {
		t.Fatalf("Dial /strict without Origin: %v %d %v", c4, status, err)
	}
	c5, status, err := wstest.Dial(t, base+"/strict", http.Header{"Origin": {"http://localhost"}})
	if err != nil || status != 101 {
		t.Fatalf("Dial /strict with Origin: %d %v", status, err)
	}
	_ = c5.SendText(`{"type":"o"}`)
	c5.Next(t, "o", 5*time.Second)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
