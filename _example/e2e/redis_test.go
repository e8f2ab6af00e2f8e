package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

// TestTwoProcessesRealRedis runs the demo as two processes against a real
// redis-server and chats across them: a message sent to process A reaches a
// client of process B and the sender, in the same order for both. Then A is
// stopped with SIGTERM: its client gets close 1001, A exits 0, and B keeps
// relaying.
func TestTwoProcessesRealRedis(t *testing.T) {
	a, addrA, addrB, rs := twoDemos(t, []string{"-rate-limit", "0"}, nil)
	instA, instB := instanceID(t, "http://"+addrA), instanceID(t, "http://"+addrB)
	if instA == instB {
		t.Fatalf("both processes report instance %q", instA)
	}
	t.Logf("process A: %s on %s, process B: %s on %s, redis %s", instA, addrA, instB, addrB, rs.Addr)

	room := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	wsURL := func(addr, user string) string {
		return "ws://" + addr + "/chat?" + url.Values{"room": {room}, "user": {user}}.Encode()
	}
	bob := dialWS(t, wsURL(addrB, "bob"))
	if f := expect(t, "bob@B", bob, "joined"); f.Room != room || f.Resumed {
		t.Fatalf("bob: joined frame %+v", f)
	}
	alice := dialWS(t, wsURL(addrA, "alice"))
	if f := expect(t, "alice@A", alice, "joined"); f.Room != room || f.Resumed {
		t.Fatalf("alice: joined frame %+v", f)
	}

	// The room key is set on join, with a TTL (the README's Redis layout).
	key := "chat:room:{" + room + "}"
	rc, ctx := rs.Client(t), context.Background()
	if n, err := rc.Exists(ctx, key).Result(); err != nil || n != 1 {
		t.Errorf("EXISTS %s = %d, %v; want 1", key, n, err)
	}
	if ttl, err := rc.TTL(ctx, key).Result(); err != nil || ttl <= 0 {
		t.Errorf("TTL %s = %v, %v; want a positive TTL", key, ttl, err)
	}

	start := time.Now()
	send(t, alice, map[string]string{"type": "message", "room": room, "text": "hello from A", "ref": "a1"})
	send(t, bob, map[string]string{"type": "message", "room": room, "text": "hello from B", "ref": "b1"})
	var got [2][]frame
	for i, c := range []*wstest.Conn{alice, bob} {
		for range 2 {
			got[i] = append(got[i], expect(t, []string{"alice@A", "bob@B"}[i], c, "message"))
		}
	}
	t.Logf("both clients got both messages within %v", time.Since(start).Round(time.Millisecond))
	for i := range got[0] {
		ma, mb := got[0][i], got[1][i]
		if ma.ID != mb.ID || ma.Text != mb.Text || ma.User != mb.User || ma.Instance != mb.Instance || ma.TS != mb.TS {
			t.Errorf("message %d differs between the clients:\nalice got %+v\nbob   got %+v", i, ma, mb)
		}
	}
	want := map[string]struct{ user, instance, ref string }{
		"hello from A": {"alice", instA, "a1"},
		"hello from B": {"bob", instB, "b1"},
	}
	for _, m := range got[0] {
		w, ok := want[m.Text]
		if !ok || m.User != w.user || m.Instance != w.instance || m.Ref != w.ref || m.Room != room || m.ID == "" || m.TS == 0 {
			t.Errorf("unexpected message %+v (want user %q, instance %q, ref %q)", m, w.user, w.instance, w.ref)
		}
		delete(want, m.Text)
	}
	if got[0][0].ID == got[0][1].ID {
		t.Errorf("two messages share the id %q", got[0][0].ID)
	}

	// Graceful shutdown of A: its client is told 1001 (going away), the
	// process exits 0 (checked by stop), and B still works.
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop() }()
	code := alice.ExpectClose(t, 10*time.Second)
	if code != 1001 {
		t.Errorf("alice: close code %d after SIGTERM, want 1001", code)
	}
	_ = alice.SendClose(code, "") // as a browser answers
	if err := <-stopped; err != nil {
		t.Errorf("demo A: %v", err)
	}
	send(t, bob, map[string]string{"type": "message", "room": room, "text": "still here", "ref": "b2"})
	if m := expect(t, "bob@B", bob, "message"); m.Text != "still here" || m.Instance != instB || m.Ref != "b2" {
		t.Errorf("bob after A stopped: %+v", m)
	}
}

// send writes v as one text frame, failing the test if it cannot.
func send(t *testing.T, c *wstest.Conn, v any) {
	t.Helper()
	if err := c.SendJSON(v); err != nil {
		t.Fatalf("send %v: %v", v, err)
	}
}
