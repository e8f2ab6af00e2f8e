package chat

import (
	"testing"
	"time"
)

// Stats counts what an operator watches: connections, rooms, messages in
// and out, and every refusal by its reason.
func TestStatsCount(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be, WithRateLimit(1000, 3))
		if s := in.h.Stats(); s != (Stats{}) {
			t.Fatalf("fresh Handler: %+v, want zeros", s)
		}
		alice := in.connect(t, "room=lobby&user=alice")
		bob := in.connect(t, "room=lobby&room=side&user=bob")

		must(t, alice.SendJSON(msgFrame("lobby", "hi", "m1")))
		alice.Next(t, "message", wait)
		bob.Next(t, "message", wait)
		must(t, alice.SendText("not json"))
		alice.Next(t, "error", wait)
		for range 4 { // a burst of 3 is allowed: the fourth frame is refused
			must(t, bob.SendJSON(msgFrame("nowhere", "x", "")))
		}
		var codes []string
		for range 4 {
			codes = append(codes, str(bob.Next(t, "error", wait)["code"]))
		}
		if codes[3] != codeRateLimited {
			t.Fatalf("error codes %v, want the fourth rate_limited", codes)
		}

		want := Stats{
			Connections:         2,
			Rooms:               2,
			ConnectionsAccepted: 2,
			MessagesPublished:   1,
			Deliveries:          2,
			Dropped:             Drops{RateLimited: 1, BadFrames: 4},
		}
		// The publisher counts a message when Redis's reply reaches it,
		// which can be after the members got the message itself.
		got := in.h.Stats()
		for deadline := time.Now().Add(wait); got != want && time.Now().Before(deadline); got = in.h.Stats() {
			time.Sleep(10 * time.Millisecond)
		}
		if got != want {
			t.Errorf("Stats() = %+v\nwant       %+v", got, want)
		}
		bob.Close()
		eventually(t, wait, "bob's connection counted after it closed", func() bool {
			s := in.h.Stats()
			return s.Connections == 1 && s.Rooms == 1 && s.ConnectionsAccepted == 2
		})
	})
}
