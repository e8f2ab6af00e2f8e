package chat

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

// A frame over the size limit closes the connection with 1009, and the
// others in the room are not affected.
func TestOversizeFrameCloses1009(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=big&user=big")
	other := in.connect(t, "room=big&user=small")
	must(t, c.SendFrame(wstest.OpText, make([]byte, 32<<10+1), true))
	if code := c.ExpectClose(t, wait); code != 1009 {
		t.Fatalf("close code %d, want 1009", code)
	}
	must(t, other.SendJSON(msgFrame("big", "still fine", "")))
	other.Next(t, "message", wait)
}

// Pings, pongs and binary frames take tokens of the rate limit like text
// frames: x/net answered pings before the limiter saw them, so pings
// flooded for free.
func TestControlAndBinaryFramesCountAgainstRate(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithRateLimit(10, 3))
	c := in.connect(t, "room=calm&user=pinger")
	must(t, c.SendFrame(wstest.OpPing, []byte("1"), true))
	must(t, c.SendFrame(wstest.OpPong, nil, true))
	must(t, c.SendFrame(wstest.OpBinary, []byte{1}, true))
	must(t, c.SendJSON(msgFrame("calm", "over the limit", "m1"))) // the fourth frame of a burst of 3
	if e := c.Next(t, "error", wait); e["code"] != codeBadRequest {
		t.Fatalf("binary frame: %v, want bad_request", e)
	}
	if e := c.Next(t, "error", wait); e["code"] != codeRateLimited || e["ref"] != "m1" {
		t.Fatalf("message after a ping, a pong and a binary frame: %v, want rate_limited", e)
	}
	time.Sleep(150 * time.Millisecond) // a token back
	must(t, c.SendFrame(wstest.OpBinary, []byte{2}, true))
	if e := c.Next(t, "error", wait); e["code"] != codeBadRequest {
		t.Fatalf("binary frame after the refill: %v, want bad_request", e)
	}
}

// A client that floods pings is answered while its burst lasts, then closed
// with 1008 once more than a burst's worth were over the limit within a
// second; the others in its room never notice.
func TestPingFloodCloses1008(t *testing.T) {
	in := newInstance(t, miniBackend(t)) // the default limit: 20/s, bursts of 40
	flooder := in.connect(t, "room=calm&user=flooder")
	other := in.connect(t, "room=calm&user=other")
	ping := wstest.EncodeFrame(wstest.OpPing, []byte("flood"), true, wstest.FrameOptions{})
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if flooder.SendRaw(bytes.Repeat(ping, 10)) != nil {
				return
			}
			n += 10
		}
	}()
	start := time.Now()
	pongs := 0
	for {
		op, p, err := flooder.ReadFrame(wait)
		if err != nil {
			t.Fatalf("after %d pongs: %v, want close 1008", pongs, err)
		}
		if op == wstest.OpPong {
			pongs++
			continue
		}
		if op != wstest.OpClose || binary.BigEndian.Uint16(p) != closePolicy || !strings.Contains(string(p[2:]), "flooding") {
			t.Fatalf("frame op %#x %q, want close 1008 flooding", op, p)
		}
		break
	}
	close(stop)
	t.Logf("%d pings sent, %d pongs, closed after %v", <-sent, pongs, time.Since(start))
	if pongs > 41 {
		t.Errorf("%d pongs, want at most a burst (40) and one", pongs)
	}
	must(t, other.SendJSON(msgFrame("calm", "still fine", "")))
	other.Next(t, "message", wait)
}

// A message must arrive whole within the frame timeout of its first byte: a
// client that drips a frame, or fragments, byte by byte is closed with 1008
// although every byte keeps the connection's read deadline alive.
func TestDripFedMessageCloses1008(t *testing.T) {
	const frameTimeout = 300 * time.Millisecond
	in := newInstance(t, miniBackend(t), WithRateLimit(0, 1), func(c *config) { c.frameTimeout = frameTimeout })

	// drip sends b in pieces of n bytes every 20 ms until it is sent, the
	// connection fails, or the test ends.
	drip := func(c *wstest.Conn, b []byte, n int) {
		done := make(chan struct{})
		finished := make(chan struct{})
		t.Cleanup(func() { close(done); <-finished })
		go func() {
			defer close(finished)
			for _, piece := range chopBytes(b, n) {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if c.SendRaw(piece) != nil {
					return
				}
			}
		}()
	}
	payload := mustJSON(t, msgFrame("drip", strings.Repeat("x", 1000), ""))
	for _, tc := range []struct {
		name string
		b    []byte
		n    int
	}{
		{"one frame, byte by byte", wstest.EncodeFrame(wstest.OpText, payload, true, wstest.FrameOptions{}), 1},
		{"fragments of 2 bytes", fragmentsOf(payload, 2), 8}, // each write a whole fragment of 2 bytes
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := in.connect(t, "room=drip&user=dripper")
			start := time.Now()
			drip(c, tc.b, tc.n)
			if code := c.ExpectClose(t, wait); code != closePolicy {
				t.Fatalf("close %d %q, want 1008", code, c.CloseReason)
			}
			if d := time.Since(start); d < frameTimeout || d > frameTimeout+time.Second {
				t.Errorf("closed after %v, want about %v", d, frameTimeout)
			}
			t.Logf("closed with %q", c.CloseReason)
		})
	}

	// A message in fragments that arrives within the bound is relayed, and
	// the clock starts again with the next one.
	c := in.connect(t, "room=drip&user=slow")
	for i := range 3 {
		frames := fragmentsOf(mustJSON(t, msgFrame("drip", "slow "+str(i), "")), 5)
		for _, f := range chopBytes(frames, len(frames)/4+1) {
			must(t, c.SendRaw(f))
			time.Sleep(frameTimeout / 8)
		}
		if m := c.Next(t, "message", wait); m["text"] != "slow "+str(i) {
			t.Fatalf("got %v", m)
		}
	}
}
