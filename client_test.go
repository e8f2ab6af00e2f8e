package chat

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

func miniBackend(t *testing.T) *backend {
	mr := miniredis.RunT(t)
	return &backend{addr: mr.Addr(), mr: mr}
}

// Cross-origin upgrades are refused unless allowed; clients that send no
// Origin (not browsers) and same-host pages are accepted.
func TestOriginCheck(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithAllowedOrigins("https://app.example.com"))
	host := strings.TrimPrefix(in.srv.URL, "http://")
	for origin, want := range map[string]int{
		"":                             101,
		"http://" + host:               101,
		"https://app.example.com":      101,
		"https://APP.example.com":      101,
		"https://evil.example":         403,
		"https://app.example.com.evil": 403,
		"null":                         403,
		"::not a url":                  403,
	} {
		hdr := http.Header{}
		if origin != "" {
			hdr.Set("Origin", origin)
		}
		c, status, _ := dialWS(t, in.url+"?room=o", hdr)
		if status != want {
			t.Errorf("Origin %q: status %d, want %d", origin, status, want)
		}
		if c != nil {
			c.close()
		}
	}
}

// Requests that cannot become a chat connection get plain HTTP errors.
func TestHTTPErrorsBeforeUpgrade(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithMaxRooms(2))
	for query, want := range map[string]int{
		"room=bad%20room":      400,
		"user=%07bell":         400,
		"room=a&room=b&room=c": 400,
		"room=a&room=a&room=b": 101, // duplicates count once
	} {
		c, status, _ := dialWS(t, in.url+"?"+query, nil)
		if status != want {
			t.Errorf("?%s: status %d, want %d", query, status, want)
		}
		if c != nil {
			c.close()
		}
	}
	resp, err := http.Get(in.srv.URL + "/chat")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("plain GET: status %d, want 400", resp.StatusCode)
	}
	resp, err = http.Post(in.srv.URL+"/chat", "text/plain", nil)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
}

// The authenticate hook runs before the upgrade: an error is a 401, and
// the user it returns is the one on messages, whatever the query says.
func TestAuthenticateHook(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithAuthenticate(func(r *http.Request) (string, error) {
		if r.Header.Get("Cookie") != "session=carol" {
			return "", errors.New("no session")
		}
		return "carol", nil
	}))
	if _, status, _ := dialWS(t, in.url+"?room=auth&user=carol", nil); status != 401 {
		t.Fatalf("no session: status %d, want 401", status)
	}
	c, status, err := dialWS(t, in.url+"?room=auth&user=mallory", http.Header{"Cookie": {"session=carol"}})
	if status != 101 {
		t.Fatalf("with session: status %d (%v), want 101", status, err)
	}
	c.next(t, "joined", wait)
	must(t, c.sendJSON(msgFrame("auth", "it's me", "")))
	if m := c.next(t, "message", wait); m["user"] != "carol" {
		t.Fatalf("message user = %v, want the hook's carol", m["user"])
	}
}

// A user without a name gets an anonymous one.
func TestAnonymousUser(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=anon")
	must(t, c.sendJSON(msgFrame("anon", "who am I", "")))
	if u := str(c.next(t, "message", wait)["user"]); !strings.HasPrefix(u, "anon-") || !validUser(u) {
		t.Fatalf("user = %q, want anon-<random>", u)
	}
}

// A frame over the size limit closes the connection with 1009, and the
// others in the room are not affected.
func TestOversizeFrameCloses1009(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=big&user=big")
	other := in.connect(t, "room=big&user=small")
	must(t, c.sendFrame(0x1, make([]byte, 32<<10+1), true))
	if code := c.expectClose(t, wait); code != 1009 {
		t.Fatalf("close code %d, want 1009", code)
	}
	must(t, other.sendJSON(msgFrame("big", "still fine", "")))
	other.next(t, "message", wait)
}

// The server answers a client's close frame with a close frame.
func TestClientCloseIsAnswered(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "room=bye&user=polite")
	must(t, c.sendClose(1000, "bye"))
	if code := c.expectClose(t, wait); code != 1000 {
		t.Fatalf("close reply code %d, want 1000", code)
	}
	eventually(t, wait, "connection still registered", func() bool { return in.clientCount() == 0 })
}

// Server pings keep a responsive client connected; a peer that sends
// nothing, not even pongs, is dropped after the read timeout.
func TestKeepalive(t *testing.T) {
	const ping, read = 40 * time.Millisecond, 400 * time.Millisecond
	in := newInstance(t, miniBackend(t), WithTimeouts(ping, read, time.Second))
	alive := in.connect(t, "room=ka&user=alive")
	silent := in.connect(t, "room=ka&user=silent")
	silent.noPong = true

	// The responsive client answers pings (readJSON does) for 3 read
	// timeouts, on its own goroutine.
	aliveErr := make(chan error, 1)
	go func() {
		end := time.Now().Add(3 * read)
		for time.Now().Before(end) {
			if _, err := alive.readJSON(read / 4); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				aliveErr <- err
				return
			}
		}
		aliveErr <- nil
	}()

	start := time.Now()
	pings := 0
	for {
		op, _, err := silent.readFrame(2 * read)
		if err != nil {
			break // dropped
		}
		if op == 0x9 {
			pings++
		}
	}
	if d := time.Since(start); d < read || d > read+time.Second {
		t.Errorf("silent client dropped after %v, want about %v", d, read)
	}
	if pings == 0 {
		t.Error("silent client was never pinged")
	}
	if err := <-aliveErr; err != nil {
		t.Fatalf("responsive client dropped: %v", err)
	}
	must(t, alive.sendJSON(msgFrame("ka", "still here", "")))
	alive.next(t, "message", wait)
}

// A client that stops reading is closed (1013, best effort) once its queue
// is full, and never delays the others.
func TestSlowClientIsClosed(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		other := newInstance(t, be)
		// The slow client's socket buffers are small, but the server's send
		// buffer can hold 4 MiB and its queue 256 frames: 8 MB of messages
		// are more than all of that.
		slow, status, err := dialWSWith(t, in.url+"?room=flood&user=slow", nil, 4096)
		if status != 101 {
			t.Fatalf("dial slow: %d %v", status, err)
		}
		slow.next(t, "joined", wait)
		readers := []*testWS{in.connect(t, "room=flood&user=local"), other.connect(t, "room=flood&user=remote")}

		const n, batch = 2000, 20
		text := strings.Repeat("x", 4000)
		start := time.Now()
		// Readers acknowledge each batch, so the publisher never outruns
		// them: they are fast clients, however slow the machine.
		acks := make(chan error, 2*len(readers))
		for _, c := range readers {
			go func() {
				for i := 0; i < n; i++ {
					m, err := c.readJSON(10 * time.Second)
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
		// Reading now, the slow client finds the end of its connection: the
		// 1013 close if it fitted in the socket buffers, else a dropped TCP.
		if code := slow.expectClose(t, 10*time.Second); code != 1013 && code != 1006 {
			t.Fatalf("slow client close code %d, want 1013 (or 1006)", code)
		}
	})
}
