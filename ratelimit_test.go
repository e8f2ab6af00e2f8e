package chat

import (
	"fmt"
	"testing"
	"time"
)

// Over the rate limit, frames are refused with rate_limited; the connection
// stays and works again once tokens come back.
func TestRateLimit(t *testing.T) {
	in := newInstance(t, miniBackend(t), WithRateLimit(10, 3))
	c := in.connect(t, "room=calm&user=chatty")
	for i := 0; i < 5; i++ {
		must(t, c.SendJSON(msgFrame("calm", "spam", str(i))))
	}
	got := map[string]string{}
	for len(got) < 5 {
		f, err := c.ReadJSON(wait)
		must(t, err)
		got[str(f["ref"])] = str(f["type"]) + "/" + str(f["code"])
	}
	want := map[string]string{"0": "message/<nil>", "1": "message/<nil>", "2": "message/<nil>",
		"3": "error/rate_limited", "4": "error/rate_limited"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replies = %v, want %v (a burst of 3)", got, want)
	}
	time.Sleep(150 * time.Millisecond) // the behaviour under test: refill at 10/s
	must(t, c.SendJSON(msgFrame("calm", "later", "5")))
	if m := c.Next(t, "message", wait); m["ref"] != "5" {
		t.Fatalf("after the refill: %v", m)
	}
}

// A connection that churns through room names cannot make Redis hold more
// than its join budget of room keys: its first WithMaxRooms joins, then 12
// a minute; the joins over it are answered rate_limited.
func TestRoomChurnIsBounded(t *testing.T) {
	be := miniBackend(t)
	in := newInstance(t, be, WithMaxRooms(4), WithRateLimit(1000, 1000)) // only the join budget binds
	c := in.connect(t, "user=churner")
	limited := 0
	for i := range 40 {
		room := fmt.Sprintf("churn-%d", i)
		must(t, c.SendJSON(map[string]any{"type": "join", "room": room}))
		f, err := c.ReadJSON(wait)
		must(t, err)
		switch {
		case f["type"] == "joined":
			must(t, c.SendJSON(map[string]any{"type": "leave", "room": room}))
			c.Next(t, "left", wait)
		case f["code"] == codeRateLimited:
			limited++
		default:
			t.Fatalf("join %s: %v", room, f)
		}
	}
	keys := len(be.mr.Keys())
	if keys > 4+1 { // the burst, and at most one join earned back meanwhile
		t.Errorf("Redis holds %d keys after 40 joins of new rooms, want at most 5", keys)
	}
	if limited < 35 {
		t.Errorf("%d joins refused, want at least 35 of 40", limited)
	}
	t.Logf("40 joins of new rooms: %d refused, %d room keys in Redis", limited, keys)
}
