package chat

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/wstest"
)

type ctxKey struct{}

// WithAuthorize refuses a room before any subscription: the client gets
// forbidden with its ref, is not subscribed (Redis has no channel for the
// room), hears nothing the room says, and its connection keeps working; at
// connect the refusal closes with 1008. The hook sees the request's context
// values, and one that panics only refuses.
func TestAuthorize(t *testing.T) {
	be := miniBackend(t)
	var seen string
	h := New(be.client(t), be.client(t), WithLogger(testLogger(t)), WithAuthorize(func(ctx context.Context, user, room string) error {
		seen, _ = ctx.Value(ctxKey{}).(string)
		switch {
		case room == "boom":
			panic("hook bug")
		case strings.HasPrefix(room, "staff-") && !strings.HasPrefix(user, "admin"):
			return errors.New("staff only")
		}
		return nil
	}))
	t.Cleanup(func() { _ = h.Shutdown(context.Background()) })
	// Middleware that puts session data in the request's context.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, "session-42")))
	}))
	t.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	admin := wstest.MustDial(t, url+"?user=admin1&room=staff-room", nil)
	admin.Next(t, "joined", wait)
	mallory := wstest.MustDial(t, url+"?user=mallory&room=lobby", nil)
	mallory.Next(t, "joined", wait)
	must(t, mallory.SendJSON(map[string]any{"type": "join", "room": "staff-room", "ref": "sneak"}))
	if e := mallory.Next(t, "error", wait); e["code"] != codeForbidden || e["ref"] != "sneak" || e["message"] != "staff only" {
		t.Fatalf("refused join: %v, want forbidden with ref sneak and the hook's reason", e)
	}
	if seen != "session-42" {
		t.Errorf("the hook saw context value %q, want the request's session-42", seen)
	}
	must(t, admin.SendJSON(msgFrame("staff-room", "secret", "")))
	admin.Next(t, "message", wait)
	must(t, mallory.SendJSON(msgFrame("lobby", "still here", "")))
	if m := mallory.Next(t, "message", wait); m["text"] != "still here" {
		t.Fatalf("after the refusal: %v, want mallory's own message (and nothing of staff-room)", m)
	}
	for _, f := range mallory.Skipped {
		if f["room"] == "staff-room" {
			t.Errorf("mallory received %v", f)
		}
	}
	if subs := be.mr.PubSubNumSub("chat:msg:{staff-room}")["chat:msg:{staff-room}"]; subs != 1 {
		t.Errorf("%d subscriptions to staff-room, want 1 (the admin's instance)", subs)
	}

	must(t, mallory.SendJSON(map[string]any{"type": "join", "room": "boom", "ref": "b"}))
	if e := mallory.Next(t, "error", wait); e["code"] != codeForbidden || e["ref"] != "b" {
		t.Fatalf("panicking hook: %v, want forbidden", e)
	}
	if got := h.Stats().Dropped.Forbidden; got != 2 {
		t.Errorf("Stats().Dropped.Forbidden = %d, want 2", got)
	}

	refused := wstest.MustDial(t, url+"?user=eve&room=lobby&room=staff-x", nil)
	if code := refused.ExpectClose(t, wait); code != 1008 || !strings.Contains(refused.CloseReason, "staff only") {
		t.Errorf("refused room at connect: close %d %q, want 1008 with the reason", code, refused.CloseReason)
	}
}

// WithOnMessage may rewrite a message, which every member on every instance
// then gets, or refuse it; a rewrite is checked again; a slow hook on one
// connection does not delay another's messages.
func TestOnMessage(t *testing.T) {
	be := miniBackend(t)
	release := make(chan struct{})
	hook := WithOnMessage(func(ctx context.Context, m *Message) error {
		switch {
		case m.Text == "slow":
			select {
			case <-release:
			case <-ctx.Done():
			}
		case strings.Contains(m.Text, "spam"):
			return errors.New("no spam here")
		case m.Text == "erase":
			m.Text = ""
		case m.Text == "inflate":
			m.Text = strings.Repeat("x", 5000)
		}
		m.Text = strings.ReplaceAll(m.Text, "darn", "d**n")
		m.User = "somebody else" // not the hook's to change
		return nil
	})
	a, b := newInstance(t, be, hook), newInstance(t, be, hook)
	alice := a.connect(t, "user=alice&room=mod")
	bob := b.connect(t, "user=bob&room=mod")

	must(t, alice.SendJSON(msgFrame("mod", "darn it", "r1")))
	for _, c := range []*wstest.Conn{alice, bob} {
		if m := c.Next(t, "message", wait); m["text"] != "d**n it" || m["user"] != "alice" {
			t.Fatalf("rewritten message: %v, want d**n it from alice", m)
		}
	}
	for ref, want := range map[string]string{"spam please": codeForbidden, "erase": codeBadRequest, "inflate": codeTooLarge} {
		must(t, alice.SendJSON(msgFrame("mod", ref, ref)))
		if e := alice.Next(t, "error", wait); e["code"] != want || e["ref"] != ref {
			t.Errorf("%q: %v, want %s with its ref", ref, e, want)
		}
	}

	must(t, alice.SendJSON(msgFrame("mod", "slow", "s")))
	start := time.Now()
	must(t, bob.SendJSON(msgFrame("mod", "meanwhile", "")))
	if m := bob.Next(t, "message", wait); m["text"] != "meanwhile" {
		t.Fatalf("while alice's hook is stuck: %v", m)
	}
	t.Logf("bob's message went through in %v while alice's hook was stuck", time.Since(start).Round(time.Millisecond))
	close(release)
	if m := alice.Next(t, "message", wait); m["text"] != "meanwhile" {
		t.Fatalf("alice: %v", m)
	}
}

// Kick takes a user out of a room on every instance: each of the user's
// clients gets left with reason kicked and nothing the room says after
// that; the others stay, and the user's other rooms are untouched.
func TestKick(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be), newInstance(t, be)
		m1 := a.connect(t, "user=mallory&room=k&room=other")
		m1b := a.connect(t, "user=mallory&room=k") // a's only other member of k
		m2 := b.connect(t, "user=mallory&room=k")
		alice := b.connect(t, "user=alice&room=k")

		must(t, a.h.Kick(context.Background(), "k", "mallory"))
		for i, c := range []*wstest.Conn{m1, m1b, m2} {
			if f := c.Next(t, "left", wait); f["room"] != "k" || f["reason"] != "kicked" {
				t.Fatalf("mallory's client %d: %v, want left k kicked", i, f)
			}
		}
		must(t, alice.SendJSON(msgFrame("k", "after the kick", "")))
		if m := alice.Next(t, "message", wait); m["text"] != "after the kick" {
			t.Fatalf("alice: %v", m)
		}
		must(t, m1.SendJSON(msgFrame("other", "still in other", "")))
		if m := m1.Next(t, "message", wait); m["text"] != "still in other" {
			t.Fatalf("mallory in another room: %v", m)
		}
		for i, c := range []*wstest.Conn{m1, m2} {
			for _, f := range c.Skipped {
				if f["text"] == "after the kick" {
					t.Errorf("mallory's client %d got %v after the kick", i, f)
				}
			}
		}
		// Instance a has nobody left in k: it lets go of the subscription.
		eventually(t, wait, "a unsubscribed from k", func() bool {
			n, _ := be.client(t).PubSubNumSub(context.Background(), "chat:msg:{k}").Result()
			return n["chat:msg:{k}"] == 1 // b's, for alice
		})
		must(t, m2.SendJSON(msgFrame("k", "let me in", "x")))
		if e := m2.Next(t, "error", wait); e["code"] != codeNotJoined {
			t.Errorf("kicked client sends to the room: %v, want not_joined", e)
		}
		if err := a.h.Kick(context.Background(), "bad room", "x"); !errors.Is(err, ErrInvalidRoom) {
			t.Errorf("Kick of a bad room = %v, want ErrInvalidRoom", err)
		}
	})
}
